//! The built-in embedder: works on a fresh machine with no network and no
//! model download, so knowledge search is there from the first start.
//!
//! A text becomes features (lower-cased words without stop words, adjacent
//! word pairs, and character trigrams of each word, which catch shared stems
//! such as *deploy*/*deployment*), each weighted by `1 + ln(tf)` and its kind,
//! then hashed with a sign bit into [`DIMENSION`] buckets (the hashing
//! trick) and L2-normalised. A query is weighted once more by each feature's
//! inverse document frequency in the collection ([`FeatureStats`]), so rare
//! words count more than common ones; stored vectors do not depend on the
//! collection, so adding documents never makes old vectors stale.
//!
//! Quality, honestly: this is lexical similarity with a little morphology.
//! It finds documents that share words, stems and phrases with the query and
//! ranks rarer shared words higher; it knows no synonyms and no meaning
//! (*car* and *automobile* are unrelated to it). For semantic search,
//! configure the provider embedder (an OpenAI-compatible `/embeddings`).

use std::collections::HashMap;

/// Dimensions of the built-in embedding (the common size of small models).
pub const DIMENSION: usize = 384;

/// The embedder's recorded name; a change of features must change it.
pub const NAME: &str = "builtin:hashed-ngrams-v1";

const WORD_WEIGHT: f32 = 1.0;
const PAIR_WEIGHT: f32 = 0.6;
const TRIGRAM_WEIGHT: f32 = 0.35;

/// English words too common to tell documents apart.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
    "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will", "with",
];

/// A hashed feature of a text, with its weight before IDF.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    pub hash: u64,
    pub weight: f32,
}

/// The lower-cased words of `text` that carry meaning.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

/// FNV-1a: stable across runs and platforms (vectors are stored on disk).
fn fnv1a(kind: u8, parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(kind);
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Final avalanche so that low bits (the bucket) depend on every byte.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The distinct features of `text` with `1 + ln(tf)` times their kind weight.
pub fn features(text: &str) -> Vec<Feature> {
    let words = words(text);
    let mut counts: HashMap<u64, (f32, f32)> = HashMap::new();
    let mut add = |hash: u64, weight: f32| {
        let entry = counts.entry(hash).or_insert((0.0, weight));
        entry.0 += 1.0;
    };
    for (i, word) in words.iter().enumerate() {
        add(fnv1a(b'w', &[word.as_bytes()]), WORD_WEIGHT);
        if let Some(next) = words.get(i + 1) {
            add(
                fnv1a(b'p', &[word.as_bytes(), next.as_bytes()]),
                PAIR_WEIGHT,
            );
        }
        let padded: Vec<char> = std::iter::once('^')
            .chain(word.chars())
            .chain(std::iter::once('$'))
            .collect();
        let mut buf = [0u8; 12];
        for gram in padded.windows(3) {
            let mut len = 0;
            for c in gram {
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            add(fnv1a(b't', &[&buf[..len]]), TRIGRAM_WEIGHT);
        }
    }
    counts
        .into_iter()
        .map(|(hash, (tf, weight))| Feature {
            hash,
            weight: (1.0 + tf.ln()) * weight,
        })
        .collect()
}

/// How many documents of a collection have each feature: the query-side
/// inverse document frequency.
#[derive(Debug, Default, Clone)]
pub struct FeatureStats {
    documents: u64,
    frequency: HashMap<u64, u32>,
}

impl FeatureStats {
    /// Counts one more document with `text`.
    pub fn add(&mut self, text: &str) {
        self.documents += 1;
        for f in features(text) {
            *self.frequency.entry(f.hash).or_insert(0) += 1;
        }
    }

    /// Forgets one document with `text` (as it was added).
    pub fn remove(&mut self, text: &str) {
        self.documents = self.documents.saturating_sub(1);
        for f in features(text) {
            if let Some(n) = self.frequency.get_mut(&f.hash) {
                *n -= 1;
                if *n == 0 {
                    self.frequency.remove(&f.hash);
                }
            }
        }
    }

    /// BM25's inverse document frequency, positive for every feature some
    /// document has. A feature no document has gets 0: it cannot match
    /// anything, and its hashed bucket would only add collision noise.
    pub fn idf(&self, hash: u64) -> f32 {
        let Some(&df) = self.frequency.get(&hash) else {
            return 0.0;
        };
        let (n, df) = (self.documents as f32, df as f32);
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }
}

/// The stored embedding of a document.
pub fn embed_document(text: &str) -> Vec<f32> {
    to_vector(features(text).into_iter())
}

/// The embedding of a query against a collection's statistics.
pub fn embed_query(text: &str, stats: &FeatureStats) -> Vec<f32> {
    to_vector(features(text).into_iter().map(|f| Feature {
        hash: f.hash,
        weight: f.weight * stats.idf(f.hash),
    }))
}

fn to_vector(features: impl Iterator<Item = Feature>) -> Vec<f32> {
    let mut vector = vec![0f32; DIMENSION];
    for f in features {
        let bucket = (f.hash % DIMENSION as u64) as usize;
        let sign = if f.hash >> 63 == 0 { 1.0 } else { -1.0 };
        vector[bucket] += sign * f.weight;
    }
    normalise(&mut vector);
    vector
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let v = embed_document("Security review of the payment service");
        assert_eq!(v.len(), DIMENSION);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(v, embed_document("Security review of the payment service"));
        assert!(embed_document("the of and").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn shared_words_and_stems_are_closer_than_unrelated_text() {
        let doc = embed_document("Deployments freeze every Friday afternoon");
        let related = embed_document("when is the deployment freeze");
        let unrelated = embed_document("quarterly revenue grew in europe");
        assert!(cosine(&doc, &related) > cosine(&doc, &unrelated) + 0.2);
    }

    #[test]
    fn rare_query_words_weigh_more_than_common_ones() {
        let mut stats = FeatureStats::default();
        let docs = [
            "policy about service deploys",
            "policy about service budgets",
            "policy about service encryption keys",
        ];
        for d in docs {
            stats.add(d);
        }
        let q = embed_query("policy encryption", &stats);
        let scores: Vec<f32> = docs
            .iter()
            .map(|d| cosine(&q, &embed_document(d)))
            .collect();
        assert!(scores[2] > scores[0] && scores[2] > scores[1], "{scores:?}");
        stats.remove(docs[2]);
        assert_eq!(stats.documents, 2);
        assert_eq!(
            stats.idf(fnv1a(b'w', &[b"encryption"])),
            0.0,
            "no document has it now"
        );
        assert!(stats.idf(fnv1a(b'w', &[b"policy"])) > 0.0);
    }
}

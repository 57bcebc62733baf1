//! Reciprocal rank fusion: combines rankings whose scores are not comparable
//! (cosine similarity, BM25) by rank alone, as Cormack et al. (2009) define
//! it: `score(d) = Σ 1 / (K + rank_i(d))` over the rankings containing `d`.

use std::collections::HashMap;

/// The usual constant: dampens the weight of the very first ranks.
pub const K: f32 = 60.0;

/// Fuses rankings (keys best first) into one, best first; ties keep the
/// order of first appearance so results are deterministic.
pub fn reciprocal_rank_fusion(rankings: &[&[u64]]) -> Vec<(u64, f32)> {
    let mut scores: HashMap<u64, (f32, usize)> = HashMap::new();
    let mut order = 0;
    for ranking in rankings {
        for (rank, key) in ranking.iter().enumerate() {
            let entry = scores.entry(*key).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += 1.0 / (K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(u64, f32, usize)> =
        scores.into_iter().map(|(k, (s, o))| (k, s, o)).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused.into_iter().map(|(k, s, _)| (k, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_ranked_well_by_both_beats_one_ranked_first_by_one() {
        let vector = [1, 2, 3];
        let keyword = [4, 2, 1];
        let fused = reciprocal_rank_fusion(&[&vector, &keyword]);
        let keys: Vec<u64> = fused.iter().map(|f| f.0).collect();
        assert_eq!(keys[..2], [1, 2]);
        assert_eq!(keys.len(), 4);
        assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-6);
    }

    #[test]
    fn one_ranking_keeps_its_order() {
        let fused = reciprocal_rank_fusion(&[&[9, 8, 7], &[]]);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), [9, 8, 7]);
    }
}

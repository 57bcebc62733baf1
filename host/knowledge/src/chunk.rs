//! Splits markdown and text into search-sized chunks.
//!
//! A document is cut at its headings first (a chunk never mixes two
//! sections, and carries its heading trail so that "## Rollback" under
//! "# Deploys" still matches "deploy rollback"), then each section is packed
//! paragraph by paragraph up to [`ChunkSettings::max_chars`]. Consecutive
//! chunks of a section overlap by about [`ChunkSettings::overlap_chars`]
//! (whole paragraphs, or the tail of an over-long one), so a sentence cut at
//! a boundary is still found whole in one of them.

/// Sizes of chunks, in characters.
#[derive(Debug, Clone, Copy)]
pub struct ChunkSettings {
    pub max_chars: usize,
    pub overlap_chars: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            max_chars: 1_200,
            overlap_chars: 200,
        }
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// 0-based position of the chunk in its document.
    pub position: usize,
    /// The heading trail (`Deploys > Rollback`), empty before the first heading.
    pub heading: String,
    pub text: String,
}

/// The chunks of a markdown (or plain text) document, in order.
pub fn chunk_markdown(text: &str, settings: ChunkSettings) -> Vec<Chunk> {
    let settings = ChunkSettings {
        max_chars: settings.max_chars.max(64),
        overlap_chars: settings.overlap_chars.min(settings.max_chars / 2),
    };
    let mut chunks = Vec::new();
    for section in sections(text) {
        let trail = section.trail.join(" > ");
        for body in pack(&section.paragraphs, settings) {
            let text = if trail.is_empty() {
                body
            } else {
                format!("{trail}\n\n{body}")
            };
            chunks.push(Chunk {
                position: chunks.len(),
                heading: trail.clone(),
                text,
            });
        }
    }
    chunks
}

struct Section {
    trail: Vec<String>,
    paragraphs: Vec<String>,
}

/// Heading level and title of a markdown ATX heading line.
fn heading(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    let level = trimmed.chars().take_while(|c| *c == '#').count();
    if (1..=6).contains(&level) {
        let rest = &trimmed[level..];
        if rest.is_empty() || rest.starts_with(' ') {
            return Some((level, rest.trim().trim_end_matches('#').trim()));
        }
    }
    None
}

fn sections(text: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut trail: Vec<(usize, String)> = Vec::new();
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_fence = false;
    let flush_paragraph = |current: &mut String, paragraphs: &mut Vec<String>| {
        let p = current.trim();
        if !p.is_empty() {
            paragraphs.push(p.to_string());
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence && let Some((level, title)) = heading(line) {
            flush_paragraph(&mut current, &mut paragraphs);
            if !paragraphs.is_empty() {
                out.push(Section {
                    trail: trail.iter().map(|(_, t)| t.clone()).collect(),
                    paragraphs: std::mem::take(&mut paragraphs),
                });
            }
            trail.retain(|(l, _)| *l < level);
            if !title.is_empty() {
                trail.push((level, title.to_string()));
            }
            continue;
        }
        if !in_fence && line.trim().is_empty() {
            flush_paragraph(&mut current, &mut paragraphs);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush_paragraph(&mut current, &mut paragraphs);
    if !paragraphs.is_empty() {
        out.push(Section {
            trail: trail.iter().map(|(_, t)| t.clone()).collect(),
            paragraphs,
        });
    }
    out
}

/// Cuts an over-long paragraph into pieces of at most `max` characters at
/// whitespace, each starting `overlap` characters before the previous end.
fn split_long(paragraph: &str, max: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<char> = paragraph.chars().collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + max).min(chars.len());
        if end < chars.len()
            && let Some(space) = chars[start..end].iter().rposition(|c| c.is_whitespace())
            && space > max / 2
        {
            end = start + space;
        }
        pieces.push(
            chars[start..end]
                .iter()
                .collect::<String>()
                .trim()
                .to_string(),
        );
        if end == chars.len() {
            break;
        }
        start = end.saturating_sub(overlap).max(start + 1);
    }
    pieces
}

fn pack(paragraphs: &[String], settings: ChunkSettings) -> Vec<String> {
    let max = settings.max_chars;
    let pieces: Vec<String> = paragraphs
        .iter()
        .flat_map(|p| {
            if p.chars().count() > max {
                split_long(p, max, settings.overlap_chars)
            } else {
                vec![p.clone()]
            }
        })
        .collect();
    let len = |v: &[&String]| v.iter().map(|p| p.chars().count() + 2).sum::<usize>();
    let mut chunks = Vec::new();
    let mut current: Vec<&String> = Vec::new();
    let mut fresh = 0; // pieces in `current` not yet in an emitted chunk
    for piece in &pieces {
        if !current.is_empty() && len(&current) + piece.chars().count() > max {
            chunks.push(join(&current));
            fresh = 0;
            // Keep trailing pieces up to the overlap as the next chunk's start.
            let mut kept = Vec::new();
            for p in current.iter().rev() {
                if len(&kept) + p.chars().count() > settings.overlap_chars
                    || len(&kept) + p.chars().count() + piece.chars().count() > max
                {
                    break;
                }
                kept.insert(0, *p);
            }
            current = kept;
        }
        current.push(piece);
        fresh += 1;
    }
    if fresh > 0 {
        chunks.push(join(&current));
    }
    chunks
}

fn join(pieces: &[&String]) -> String {
    pieces
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_start_sections_and_travel_with_their_chunks() {
        let doc = "Intro line.\n\n# Deploys\n\nWe deploy daily.\n\n## Rollback\n\nRevert the tag.\n\n# Budget\n\nMoney.";
        let chunks = chunk_markdown(doc, ChunkSettings::default());
        let headings: Vec<&str> = chunks.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(headings, ["", "Deploys", "Deploys > Rollback", "Budget"]);
        assert_eq!(chunks[2].text, "Deploys > Rollback\n\nRevert the tag.");
        assert_eq!(
            chunks.iter().map(|c| c.position).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn long_sections_are_packed_with_overlapping_paragraphs() {
        let paragraphs: Vec<String> = (0..12)
            .map(|i| format!("Paragraph {i} {}", "word ".repeat(30)))
            .collect();
        let doc = paragraphs.join("\n\n");
        let settings = ChunkSettings {
            max_chars: 500,
            overlap_chars: 200,
        };
        let chunks = chunk_markdown(&doc, settings);
        assert!(chunks.len() > 3);
        for c in &chunks {
            assert!(c.text.chars().count() <= 500, "{}", c.text.len());
        }
        for pair in chunks.windows(2) {
            let last_of_first = pair[0].text.split("\n\n").last().unwrap();
            assert!(
                pair[1].text.starts_with(last_of_first),
                "consecutive chunks share a paragraph"
            );
        }
        for p in &paragraphs {
            assert!(
                chunks.iter().any(|c| c.text.contains(p.trim())),
                "nothing lost"
            );
        }
    }

    #[test]
    fn an_over_long_paragraph_is_cut_at_spaces_with_overlap() {
        let text = "alpha beta gamma delta ".repeat(200);
        let chunks = chunk_markdown(
            &text,
            ChunkSettings {
                max_chars: 300,
                overlap_chars: 50,
            },
        );
        assert!(chunks.len() > 10);
        for c in &chunks {
            assert!(c.text.chars().count() <= 300);
            assert!(!c.text.starts_with(' '));
        }
    }

    #[test]
    fn code_fences_keep_their_hash_lines() {
        let doc = "# Script\n\n```sh\n# not a heading\necho hi\n```\n";
        let chunks = chunk_markdown(doc, ChunkSettings::default());
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].text.contains("# not a heading"));
    }
}

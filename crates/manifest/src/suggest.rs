//! "did you mean" for misspelt names in validation messages: the closest known name by
//! edit distance, if it is close enough to be a plausible typo. Never suggests a name
//! that is merely one of many equally far ones.

/// Edit distance between `a` and `b` by characters, ASCII case ignored: insertions,
/// deletions, substitutions and swaps of two neighbours ("mdoe" is one edit from "mode"),
/// each counting one (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // d[i][j]: the distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Longest name that gets a suggestion: typos are made in names people write.
pub const MAX_SUGGEST_LEN: usize = 128;

/// The known name closest to `name` when it is within a third of `name`'s length (at
/// least one edit, at most three) and no other name is as close.
/// Names longer than [`MAX_SUGGEST_LEN`] get no suggestion, so the distance table stays small
/// whatever a request carries.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    if len > MAX_SUGGEST_LEN {
        return None;
    }
    let limit = (len / 3).clamp(1, 3);
    let mut best: Option<(&str, usize)> = None;
    let mut tied = false;
    for candidate in known {
        if candidate == name {
            continue;
        }
        // Lengths further apart than the limit cannot be within it; this also keeps a long
        // candidate out of the table.
        if candidate.chars().count().abs_diff(len) > limit {
            continue;
        }
        let d = distance(name, candidate);
        if d > limit {
            continue;
        }
        match best {
            Some((_, b)) if d > b => {}
            Some((_, b)) if d == b => tied = true,
            _ => {
                best = Some((candidate, d));
                tied = false;
            }
        }
    }
    best.filter(|_| !tied).map(|(name, _)| name)
}

/// `; did you mean "NAME"?` for the closest known name, or nothing.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, known).map_or_else(String::new, |n| format!("; did you mean {n:?}?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_get_no_suggestion_and_build_no_table() {
        let long = "m".repeat(MAX_SUGGEST_LEN + 1);
        assert_eq!(closest(&long, [long[1..].as_ref()]), None);
        // A short name against a huge candidate: skipped by length.
        let huge = "x".repeat(1 << 20);
        assert_eq!(closest("mode", [huge.as_str(), "mdoe"]), Some("mdoe"));
    }

    #[test]
    fn distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("gain_db", "gain_db"), 0);
        assert_eq!(distance("Gain", "gain"), 0);
        assert_eq!(distance("calculater", "calculator"), 1);
        assert_eq!(distance("mdoe", "mode"), 1);
        assert_eq!(distance("ab", "ba"), 1);
    }

    #[test]
    fn suggests_a_close_name_and_nothing_for_a_far_or_tied_one() {
        let known = ["json.calculator", "text.transform", "audio.gain"];
        assert_eq!(closest("json.calculater", known), Some("json.calculator"));
        assert_eq!(closest("text.tranform", known), Some("text.transform"));
        assert_eq!(closest("video.scale", known), None);
        assert_eq!(closest("ab", ["ac", "ad"]), None, "tied");
        assert_eq!(
            did_you_mean("gian_db", ["gain_db"]),
            "; did you mean \"gain_db\"?"
        );
        assert_eq!(did_you_mean("x", ["gain_db"]), "");
    }
}

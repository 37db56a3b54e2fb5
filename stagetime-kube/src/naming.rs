//! Deterministic object names and valid label values.
//!
//! A PipelineRun's name is a pure function of the launch key (run id, task,
//! attempt), so a restarted worker computes the same name and finds what an
//! earlier process created: launching is idempotent on it, and cancel needs
//! no lookup. The shape follows the earlier system's `st-<stage>-<name>-<suffix>`
//! with a hash instead of its time-based suffix; the stage is a label
//! (`stagetime/stage`) rather than part of the name, because the key does not
//! carry it:
//!
//! ```text
//! st-<task, truncated>-a<attempt>-<10 hex of sha256(run, task, attempt)>
//! ```
//!
//! ```
//! use stagetime_kube::naming::pipelinerun_name;
//! let name = pipelinerun_name("demo-4f1c2e9a77-0a1b2c3d4e", "unit-tests", 1);
//! assert!(name.starts_with("st-unit-tests-a1-"));
//! assert!(name.len() <= 63);
//! assert_eq!(name, pipelinerun_name("demo-4f1c2e9a77-0a1b2c3d4e", "unit-tests", 1));
//! ```

use sha2::{Digest, Sha256};

/// The longest DNS-1123 label and label value Kubernetes accepts.
pub const MAX_NAME: usize = 63;

/// Hex digits of the hash in names (40 bits: collisions need ~10^6 attempts
/// in one namespace before they become likely, and are then still reported,
/// never adopted, because labels are checked).
const HASH_HEX: usize = 10;

/// The first `n` hex digits of sha256 over `parts`, each length-prefixed so
/// that `("a-b", "c")` and `("a", "b-c")` differ.
pub fn short_hash(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(n)
        .map(|d| char::from_digit(u32::from(d), 16).unwrap_or('0'))
        .collect()
}

/// Lowercases `text` and replaces everything outside `a-z0-9` by `-`,
/// collapsing runs of `-` and trimming them from both ends.
pub fn dns1123_fragment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The PipelineRun name of one attempt: a DNS-1123 label of at most 63
/// characters, unique per (run, task, attempt) through its hash, stable
/// across processes.
pub fn pipelinerun_name(run: &str, task: &str, attempt: u32) -> String {
    let tail = format!(
        "-a{attempt}-{}",
        short_hash(&[run, task, &attempt.to_string()], HASH_HEX)
    );
    let room = MAX_NAME.saturating_sub("st-".len() + tail.len());
    let task = dns1123_fragment(task);
    let task: String = task.chars().take(room).collect();
    let task = task.trim_end_matches('-');
    if task.is_empty() {
        format!("st{tail}")
    } else {
        format!("st-{task}{tail}")
    }
}

/// True when `value` is a valid label value: empty, or at most 63 of
/// `[-_.A-Za-z0-9]` starting and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= MAX_NAME
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// Makes `value` a valid label value, deterministically.
///
/// Characters outside `[-_.A-Za-z0-9]` become `-`; leading and trailing
/// non-alphanumerics are dropped. A value that is still longer than 63
/// characters keeps its first 52 and gains `-` and a 10-digit hash of the
/// original, so two long values that share a prefix stay distinct. A valid
/// value is returned unchanged.
///
/// ```
/// use stagetime_kube::naming::sanitize_label_value;
/// assert_eq!(sanitize_label_value("Jane Doe <jane@example.com>"), "Jane-Doe--jane-example.com");
/// assert_eq!(sanitize_label_value("4f1"), "4f1");
/// assert!(sanitize_label_value(&"x".repeat(100)).len() <= 63);
/// ```
pub fn sanitize_label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_NAME {
        return trimmed.to_string();
    }
    let keep = MAX_NAME - HASH_HEX - 1;
    let head: String = trimmed.chars().take(keep).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{}", short_hash(&[value], HASH_HEX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1123(s: &str) -> bool {
        stagetime_core::plan::is_dns1123_label(s)
    }

    #[test]
    fn names_are_short_valid_and_deterministic() {
        let long_task = "a-very-long-task-name-that-goes-on-and-on-and-on-until-sixty-three";
        for (run, task, attempt) in [
            ("demo-4f1c2e9a77-0a1b2c3d4e", "lint", 1),
            ("demo-4f1c2e9a77-0a1b2c3d4e", long_task, 3),
            ("r", "x", 1),
            ("r", long_task, u32::MAX),
            ("r", "---", 1),
            ("r", "Odd Name/with:chars", 2),
        ] {
            let n = pipelinerun_name(run, task, attempt);
            assert!(is_dns1123(&n), "{n:?} is not a DNS-1123 label");
            assert!(n.len() <= 63, "{n:?} too long");
            assert_eq!(n, pipelinerun_name(run, task, attempt));
        }
        let n = pipelinerun_name("run", long_task, 1);
        assert!(n.starts_with("st-a-very-long-task-name"), "{n}");
        assert!(n.contains("-a1-"), "{n}");
        assert!(
            n.len() >= 62,
            "long names use the budget (a trailing dash of the cut is dropped): {n}"
        );
        assert!(
            pipelinerun_name("r", "Odd Name/with:chars", 2)
                .starts_with("st-odd-name-with-chars-a2-")
        );
        assert!(pipelinerun_name("r", "---", 1).starts_with("st-a1-"));
    }

    #[test]
    fn names_differ_across_runs_tasks_and_attempts() {
        let long_task = "t".repeat(63);
        let mut seen = std::collections::HashSet::new();
        for run in ["run-a", "run-b", "run-a-b"] {
            for task in [long_task.as_str(), &format!("{long_task}x")[1..], "x"] {
                for attempt in 1..=3 {
                    assert!(seen.insert(pipelinerun_name(run, task, attempt)));
                }
            }
        }
        // Length-prefixed hashing: shifting a dash between fields changes the hash.
        assert_ne!(short_hash(&["a-b", "c"], 10), short_hash(&["a", "b-c"], 10));
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(sanitize_label_value(""), "");
        assert_eq!(sanitize_label_value("main"), "main");
        assert_eq!(sanitize_label_value("4f1"), "4f1", "short commit ids stay");
        assert_eq!(sanitize_label_value("feature/login"), "feature-login");
        assert_eq!(sanitize_label_value("_x_"), "x");
        assert_eq!(sanitize_label_value("Ünïcode name"), "n-code-name");
        assert_eq!(sanitize_label_value("@@@"), "");
        let long = "a".repeat(70);
        let s = sanitize_label_value(&long);
        assert_eq!(s.len(), 63);
        assert!(is_label_value(&s));
        let long2 = format!("{}b", "a".repeat(69));
        assert_ne!(
            s,
            sanitize_label_value(&long2),
            "long values sharing a prefix stay distinct"
        );
        let commit = "4f1c2e9a77b3c0ffee4f1c2e9a77b3c0ffee4f1c2e9a77b3c0ffee4f1c2e9a77";
        assert!(is_label_value(&sanitize_label_value(commit)));
        for odd in [
            "a b c",
            "-lead",
            "trail.",
            "x".repeat(200).as_str(),
            "a/b:c=d",
            "日本語",
        ] {
            assert!(is_label_value(&sanitize_label_value(odd)), "{odd:?}");
        }
    }

    #[test]
    fn fragments() {
        assert_eq!(dns1123_fragment("Unit_Tests!!x"), "unit-tests-x");
        assert_eq!(dns1123_fragment("--"), "");
    }
}

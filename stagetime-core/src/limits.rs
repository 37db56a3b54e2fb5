//! The bounds every revision run respects, and saturating time arithmetic.
//!
//! [`crate::plan::Plan::build`] enforces the document bounds, so `validate`,
//! `run`, `submit`, the operator and webhooks share one rule; documents are
//! read through [`crate::spec::parse_document`], which enforces
//! [`ParseLimits`]. Servers may impose tighter limits of their own (the gRPC
//! server's document size and task count are configurable).
//!
//! | What | Bound |
//! |---|---|
//! | task `timeout`, `options.timeout` | ≤ [`MAX_TIMEOUT`] (30 days) |
//! | `retry_delay`, `options.retry_delay_max` | ≤ [`MAX_RETRY_DELAY`] (1 day) |
//! | `retries`, `options.lost_retries` | ≤ [`MAX_RETRIES`] (100) |
//! | tasks + finally tasks | ≤ [`MAX_TASKS`] (100,000) |
//! | `options.max_parallel` | 1 ..= [`MAX_TASKS`] |
//! | `stage` | a whole number 0 ..= 4,294,967,295 |
//! | document | ≤ [`ParseLimits::max_bytes`] (8 MiB), nesting ≤ 64, values (aliases expanded) ≤ bytes + 10,000 |

use std::time::Duration;

/// Longest task or run timeout: 30 days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest retry delay and retry delay cap: 1 day.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Most retries of one task.
pub const MAX_RETRIES: u32 = 100;

/// Most tasks of one run, finally tasks included.
pub const MAX_TASKS: usize = 100_000;

/// Longest text quoted in full in an error message; longer text is cut.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Bounds on one document read by [`crate::spec::parse_document`]: they
/// keep the memory of a parse within a small multiple of its size, whatever
/// aliases, nesting or repetition it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest document, in bytes (default 8 MiB).
    pub max_bytes: usize,
    /// Deepest nesting of sequences and mappings (default 64).
    pub max_depth: usize,
    /// Most values (scalars, sequences, mappings) once aliases are
    /// expanded, beyond the document's size in bytes (default 10,000): a
    /// document without aliases always fits.
    pub extra_values: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_bytes: 8 << 20,
            max_depth: 64,
            extra_values: 10_000,
        }
    }
}

impl ParseLimits {
    /// Most values (aliases expanded) a document of `len` bytes may hold.
    pub fn max_values(&self, len: usize) -> usize {
        len.saturating_add(self.extra_values)
    }

    /// Most scalar bytes (aliases expanded) a document of `len` bytes may
    /// hold: twice its size plus 64 KiB.
    pub fn max_scalar_bytes(&self, len: usize) -> usize {
        len.saturating_mul(2).saturating_add(64 << 10)
    }
}

/// `d` in whole milliseconds, saturating at `u64::MAX` (never truncated).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The time `after` past `now_ms`, saturating instead of overflowing.
pub fn due_ms(now_ms: u64, after: Duration) -> u64 {
    now_ms.saturating_add(millis(after))
}

/// `text` for an error message: debug-quoted, cut after
/// [`MAX_QUOTED_CHARS`] characters with the full length noted.
pub fn quoted(text: &str) -> String {
    let count = text.chars().count();
    if count <= MAX_QUOTED_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head:?}… ({count} characters)")
    }
}

/// What [`scan`] learnt about a document's top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Empty (or `null`).
    Null,
    /// A mapping, with its string keys.
    Mapping(Vec<String>),
    /// Anything else.
    Other,
}

/// Checks that the YAML (or JSON) `text` stays within `limits` — size,
/// nesting, and values and text with aliases expanded — without building
/// it: call it before deserializing text from outside into a generic value
/// (e.g. a pipeline file fetched from a forge). [`crate::spec::parse_document`]
/// does this itself.
///
/// # Errors
/// A message naming the limit exceeded, or the syntax error.
pub fn check_document(text: &str, limits: &ParseLimits) -> Result<(), String> {
    scan(text, limits).map(|_| ())
}

/// Walks the YAML (or JSON) `text` without building it, enforcing `limits`
/// as aliases are expanded, so that a document is only ever deserialized
/// for real once it is known to be small.
///
/// # Errors
/// A message naming the limit exceeded, or the syntax error.
pub(crate) fn scan(text: &str, limits: &ParseLimits) -> Result<Shape, String> {
    if text.len() > limits.max_bytes {
        return Err(format!(
            "{} bytes exceed the maximum of {} bytes",
            text.len(),
            limits.max_bytes
        ));
    }
    let mut budget = Budget {
        values: limits.max_values(text.len()),
        scalar_bytes: limits.max_scalar_bytes(text.len()),
        depth: limits.max_depth,
        max_depth: limits.max_depth,
        max_values: limits.max_values(text.len()),
    };
    let de = yaml_serde::Deserializer::from_str(text);
    serde::de::DeserializeSeed::deserialize(
        Node {
            budget: &mut budget,
            role: Role::Root,
        },
        de,
    )
    .map(|found| match found {
        Found::Null => Shape::Null,
        Found::Mapping(keys) => Shape::Mapping(keys),
        Found::Key(_) | Found::Other => Shape::Other,
    })
    .map_err(|e| e.to_string())
}

struct Budget {
    values: usize,
    scalar_bytes: usize,
    depth: usize,
    max_depth: usize,
    max_values: usize,
}

impl Budget {
    fn value<E: serde::de::Error>(&mut self) -> Result<(), E> {
        match self.values.checked_sub(1) {
            Some(left) => {
                self.values = left;
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "the document holds more than {} values once aliases are expanded",
                self.max_values
            ))),
        }
    }

    fn scalar<E: serde::de::Error>(&mut self, len: usize) -> Result<(), E> {
        self.value()?;
        match self.scalar_bytes.checked_sub(len) {
            Some(left) => {
                self.scalar_bytes = left;
                Ok(())
            }
            None => Err(E::custom(
                "the document's text grows past twice its size once aliases are expanded",
            )),
        }
    }

    fn enter<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.value()?;
        match self.depth.checked_sub(1) {
            Some(left) => {
                self.depth = left;
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "the document nests deeper than {} levels",
                self.max_depth
            ))),
        }
    }

    fn leave(&mut self) {
        self.depth += 1;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    RootKey,
    Inner,
}

enum Found {
    Null,
    Mapping(Vec<String>),
    Key(String),
    Other,
}

struct Node<'a> {
    budget: &'a mut Budget,
    role: Role,
}

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_> {
    type Value = Found;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    // Numbers and booleans are counted as values; only text counts as bytes.
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Found, E> {
        self.budget.scalar(0).map(|()| Found::Other)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Found, E> {
        self.budget.scalar(0).map(|()| Found::Other)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Found, E> {
        self.budget.scalar(0).map(|()| Found::Other)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Found, E> {
        self.budget.scalar(0).map(|()| Found::Other)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Found, E> {
        self.budget.scalar(v.len())?;
        Ok(match self.role {
            Role::RootKey => Found::Key(v.to_string()),
            Role::Root | Role::Inner => Found::Other,
        })
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Found, E> {
        self.budget.scalar(v.len()).map(|()| Found::Other)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Found, E> {
        self.budget.scalar(0)?;
        Ok(match self.role {
            Role::Root => Found::Null,
            Role::RootKey | Role::Inner => Found::Other,
        })
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Found, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        self.budget.enter()?;
        while seq
            .next_element_seed(Node {
                budget: &mut *self.budget,
                role: Role::Inner,
            })?
            .is_some()
        {}
        self.budget.leave();
        Ok(Found::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        self.budget.enter()?;
        let root = self.role == Role::Root;
        let mut keys = Vec::new();
        let key_role = if root { Role::RootKey } else { Role::Inner };
        while let Some(key) = map.next_key_seed(Node {
            budget: &mut *self.budget,
            role: key_role,
        })? {
            if let Found::Key(k) = key {
                keys.push(k);
            }
            map.next_value_seed(Node {
                budget: &mut *self.budget,
                role: Role::Inner,
            })?;
        }
        self.budget.leave();
        Ok(if root {
            Found::Mapping(keys)
        } else {
            Found::Other
        })
    }

    // A tagged value (`!tag value`).
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Found, A::Error> {
        use serde::de::VariantAccess;
        let (_, variant) = data.variant::<serde::de::IgnoredAny>()?;
        variant.newtype_variant_seed(Node {
            budget: self.budget,
            role: Role::Inner,
        })?;
        Ok(Found::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(
            millis(Duration::from_secs(18_446_744_073_709_552)),
            u64::MAX
        );
        assert_eq!(due_ms(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert_eq!(due_ms(1_000, Duration::from_millis(500)), 1_500);
    }

    #[test]
    fn long_text_is_cut_in_messages() {
        let long = "a".repeat(10_000);
        let q = quoted(&long);
        assert!(q.len() < 120, "{q}");
        assert!(q.ends_with("(10000 characters)"), "{q}");
        assert_eq!(quoted("lint"), "\"lint\"");
    }
}

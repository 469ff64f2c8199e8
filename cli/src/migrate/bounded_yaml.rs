//! Reading a release manifest's YAML documents into JSON values, with a bound on what is made.
//! A YAML alias repeats the node its anchor names, so a few KB of anchors and aliases can
//! expand into billions of nodes, or copy one long string millions of times (serde_yaml_ng
//! bounds how many aliases are followed, not what they expand into). The manifest comes from a
//! Secret that anyone who can write Secrets in the release's namespace can forge, and
//! migrate-helm runs with an admin's rights: such a manifest is refused instead of exhausting
//! memory.
//!
//! The bound: each node costs one, and each string (key or value) its length in bytes too, up
//! to three times the manifest's bytes. Without aliases YAML does not get there: a node takes
//! at least a byte of the source (`[a,a]`, `{0,1}` with its implicit nulls), and a string
//! decodes to at most one and a half times its source (the escape `\L`, two bytes, is the three
//! of U+2028), so no alias-free document costs more than about twice its bytes.
//!
//! That bound is kept while the values are made, but serde_yaml_ng first reads each document
//! whole into parser events, about 200 bytes of memory each: a 16 MiB manifest (the most a
//! release record may hold) of `[a,a,a,...]` took 1.6 GB before the first value was made. So a
//! manifest is refused before parsing when it holds more than `MAX_STRUCTURE` of the characters
//! YAML makes events from: flow indicators, `:` and `?`, line breaks, and `-` before a blank (a
//! block entry or a document marker). Beyond a few events per document, each such character
//! yields at most a few events (an entry of a flow mapping, with its implicit null value), and
//! no event comes without one. The count does not know a quoted string from structure: the
//! legacy chart renders a task's files as quoted strings in one ConfigMap (at most 1 MiB of
//! data), and a file of comma-separated numbers or of JSON counts up to two fifths of its
//! bytes, inside the bound. A forged manifest within it costs about 300 MB at most: 290 MB
//! measured for the densest shape found, `[? a, ? a, ...]` (a flow sequence of one-entry
//! mappings), 102 MB for `[a,a,...]`, against 1.6 GB for the latter at 16 MiB before.
//!
//! Nor is a manifest whose flow collections (`[`, `{`) may nest deeper than
//! `MAX_FLOW_DEPTH`: libyaml walks the open flow levels at each token it reads, so a manifest of
//! `[?` repeated a quarter of a million times (512 KiB, within the count above) took 258 s to
//! refuse, time growing faster than the square of its depth (7 s at a quarter of it), before
//! serde_yaml_ng's own limit of 128 levels could. With 1,024 levels open and as many tokens
//! more as the count allows, the worst shape measured took 0.6 s. The depth is counted as the
//! count above is, quoted or not (telling a quoted scalar from structure takes YAML's whole
//! grammar, and a scan that got it wrong would let a forged manifest through): the brackets
//! opened and not yet closed anywhere in the manifest, so a task's files could reach the bound
//! only with a thousand more `[` and `{` than `]` and `}`, as no prose or code has.
//!
//! Nor is a manifest with a directive (`%TAG`, `%YAML`) read: libyaml puts a `%TAG` prefix into
//! the tag of every node that uses its handle, so one prefix of megabytes, used on each of
//! thousands of nodes, would cost gigabytes while the count above saw a few characters. Helm
//! renders no directive.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{I128Deserializer, U128Deserializer};
use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What a manifest that expands beyond the bound is refused with.
pub const EXPANDS: &str = "the release manifest expands far beyond its size through YAML aliases; \
                           refused (no chart renders that)";

/// The most characters a manifest may hold that YAML makes events from (see the module's
/// documentation).
pub const MAX_STRUCTURE: usize = 1 << 19;

/// The deepest flow collections may nest (see the module's documentation). serde_yaml_ng
/// refuses more than 128 levels of any kind once a document is read.
pub const MAX_FLOW_DEPTH: usize = 1024;

/// The documents of `text`, each as JSON (an empty document is `null`), in order.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    if has_directive(text) {
        return Err(
            "the release manifest holds a YAML directive (a line starting with '%'), which \
             Helm never renders; refused"
                .to_owned(),
        );
    }
    let structure = structure(text);
    if structure > MAX_STRUCTURE {
        return Err(format!(
            "the release manifest holds {structure} YAML indicators and line breaks, more than \
             any chart of a task renders (at most {MAX_STRUCTURE}); refused"
        ));
    }
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(format!(
            "the release manifest opens more than {MAX_FLOW_DEPTH} '[' or '{{' without closing \
             them, counted quoted or not, far beyond any chart of a task; refused (if the \
             release is genuine, apply its TaskRun by hand, then `helm uninstall` it)"
        ));
    }
    let budget = Cell::new(text.len().saturating_mul(3).saturating_add(16));
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            Counted(&budget).deserialize(doc).map_err(|e| {
                let e = e.to_string();
                if e.contains(EXPANDS) {
                    EXPANDS.to_owned()
                } else {
                    format!("the release manifest is not valid YAML: {e}")
                }
            })
        })
        .collect()
}

/// YAML 1.1's line breaks, as libyaml reads them.
fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Whether a line of `text` starts with '%': a directive, where a document may have one.
fn has_directive(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').starts_with('%')
        || text
            .char_indices()
            .any(|(i, c)| is_break(c) && text[i + c.len_utf8()..].starts_with(['%', '\u{feff}']))
}

/// How many characters of `text` may start a parser event: flow indicators, `:` and `?`
/// (indicators anywhere in a flow collection), line breaks (YAML 1.1's, as libyaml's), and
/// `-` before a blank or the end (a block entry or a document marker).
fn structure(text: &str) -> usize {
    let mut chars = text.chars().peekable();
    let mut n = 0;
    while let Some(c) = chars.next() {
        let counts = match c {
            '[' | ']' | '{' | '}' | ',' | ':' | '?' => true,
            '-' => chars
                .peek()
                .is_none_or(|&next| matches!(next, ' ' | '\t' | '\0') || is_break(next)),
            c => is_break(c),
        };
        n += usize::from(counts);
    }
    n
}

/// The most `[` and `{` of `text` open at once, quoted or not (a close with none open counts
/// nothing).
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Takes `cost` from the budget, or fails once it is spent.
fn take<E: Error>(budget: &Cell<usize>, cost: usize) -> Result<(), E> {
    match budget.get().checked_sub(cost) {
        Some(left) => {
            budget.set(left);
            Ok(())
        }
        None => Err(E::custom(EXPANDS)),
    }
}

/// One node and everything under it, as JSON, each node counted.
struct Counted<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        take(self.0, 1)?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_i128<E: Error>(self, v: i128) -> Result<Value, E> {
        Value::deserialize(I128Deserializer::new(v))
    }

    fn visit_u128<E: Error>(self, v: u128) -> Result<Value, E> {
        Value::deserialize(U128Deserializer::new(v))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        take(self.0, v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        take(self.0, v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Counted(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            take::<A::Error>(self.0, 1 + key.len())?;
            let value = map.next_value_seed(Counted(self.0))?;
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json's own `Value` makes of the same YAML.
    fn unbounded(text: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).expect("valid"))
            .collect()
    }

    #[test]
    fn documents_read_as_serde_json_reads_them() {
        let text = "a: 1\nb: [x, 2.5, true, null, ~, -7]\nc: {d: e, 1: one}\n---\n---\n\
                    - 18446744073709551615\n- -9223372036854775808\n- .inf\n- |\n  text\n";
        let docs = documents(text).expect("valid");
        assert_eq!(docs, unbounded(text));
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(docs[1], Value::Null);
    }

    /// 3.5 KB that expand into a quarter of a million nodes, which serde_yaml_ng's own bound on
    /// aliases followed (500 here) lets through: refused, before they are made. Scaled up, the
    /// same shape takes any memory there is.
    #[test]
    fn aliases_that_expand_past_the_manifest_size_are_refused() {
        let wide = vec!["x"; 500].join(", ");
        let text = format!(
            "items: &w [{wide}]\ncopies: [{}]\n",
            vec!["*w"; 500].join(", ")
        );
        assert_eq!(
            unbounded(&text)[0]["copies"][499].as_array().map(Vec::len),
            Some(500)
        );
        let err = documents(&text).expect_err("refused");
        assert!(err.contains(EXPANDS), "{err}");
    }

    /// One long string copied by aliases: few nodes, but each copy is the whole string.
    #[test]
    fn aliases_that_copy_a_long_string_are_refused() {
        let long = "x".repeat(100_000);
        let text = format!("s: &s {long}\ncopies: [{}]\n", ["*s"; 10].join(", "));
        assert_eq!(
            unbounded(&text)[0]["copies"][9].as_str().map(str::len),
            Some(100_000)
        );
        assert_eq!(documents(&text), Err(EXPANDS.to_owned()));
        // As a key, too.
        let text = format!("s: &s {long}\ncopies: [{}]\n", ["{*s : 1}"; 10].join(", "));
        assert_eq!(documents(&text), Err(EXPANDS.to_owned()));
    }

    /// The densest YAML there is, and strings of escapes that grow as they decode, stay within
    /// the bound.
    #[test]
    fn alias_free_yaml_stays_within_the_bound() {
        for text in [
            format!("[{}]", ["a"; 10_000].join(",")),
            "a".to_string(),
            format!("- \"{}\"\n", "\\L".repeat(10_000)),
            format!(
                "{{{}}}",
                (0..5_000)
                    .map(|i| format!("{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "a:\n".to_string() + &"- \n".repeat(10_000),
        ] {
            let read = documents(&text);
            assert!(read.is_ok(), "{}: {read:?}", &text[..40.min(text.len())]);
        }
    }

    /// A manifest of nothing but structure is refused before it is parsed; one of the largest
    /// a task renders, a ConfigMap of 1 MiB of prose and lists as quoted strings, is read.
    #[test]
    fn a_manifest_of_little_but_structure_is_refused_before_parsing() {
        for dense in [
            format!("[{}]", ["a"; MAX_STRUCTURE].join(",")),
            "-\n".repeat(MAX_STRUCTURE / 2 + 1),
            format!("{{{}}}", [":"; MAX_STRUCTURE].join("")),
        ] {
            let err = documents(&dense).expect_err("refused");
            assert!(err.contains("YAML indicators and line breaks"), "{err}");
        }
        assert_eq!(structure("- a\n-b\n---\n[x: y, ? z]\u{2028}"), 11);
    }

    #[test]
    fn flow_collections_nested_deeper_than_any_chart_are_refused_before_parsing() {
        // Within the count of structure, and quadratic for libyaml to scan: 258 s before.
        let deep = "[?".repeat(MAX_STRUCTURE / 2);
        let refused = documents(&deep).expect_err("refused");
        assert!(
            refused.contains("more than 1024 '[' or '{'") && refused.contains("helm uninstall"),
            "{refused}"
        );
        // Nesting is read as far as serde_yaml_ng goes (128 levels); brackets closed, or up to
        // the bound left open in a quoted string, are read.
        let nested = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(documents(&nested).expect("read").len(), 1);
        let many = format!("a: \"{}\"\n", "[x] ".repeat(MAX_FLOW_DEPTH * 4));
        assert_eq!(documents(&many).expect("read").len(), 1);
        let unclosed = format!("a: \"{}\"\n", "[".repeat(MAX_FLOW_DEPTH));
        assert_eq!(documents(&unclosed).expect("read").len(), 1);
    }

    /// The largest files a task's ConfigMap holds (1 MiB), as the chart renders them (quoted),
    /// are read: prose, comma-separated numbers, JSON.
    #[test]
    fn a_configmap_of_dense_files_is_read() {
        for line in [
            "## Step\n\nRead the logs, find the cause: fix it - then test.\n- one\n| a | b |\n",
            "1,2,3,4,5,6,7,8,9,10\n",
            r#"{"a":[1,2,{"b":"c"}],"d":{"e":null}},"#,
        ] {
            let file = line.repeat((1 << 20) / line.len());
            let quoted = serde_json::to_string(&file).expect("json");
            let text = format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: t-files\ndata:\n  \
                 \"task.md\": {quoted}\n---\napiVersion: batch/v1\nkind: Job\n"
            );
            let docs = documents(&text).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(docs[0]["data"]["task.md"], Value::String(file));
        }
    }

    /// A directive could make every node's tag as long as the manifest: refused, wherever a
    /// line starts with one. A '%' inside a quoted string (its line break escaped) is not one.
    #[test]
    fn a_manifest_with_a_directive_is_refused() {
        let prefix = "x".repeat(1000);
        for text in [
            format!("%TAG !a! tag:{prefix}\n--- [!a!b x, !a!b x]\n"),
            "%YAML 1.1\n---\na: 1\n".to_owned(),
            "\u{feff}%YAML 1.1\n---\na: 1\n".to_owned(),
            "a: 1\n...\n%YAML 1.1\n---\nb: 2\n".to_owned(),
            "a: 1\r\n...\r\n%YAML 1.1\r\n---\r\nb: 2\r\n".to_owned(),
        ] {
            let err = documents(&text).expect_err("refused");
            assert!(err.contains("YAML directive"), "{text:?}: {err}");
        }
        let docs = documents("a: \"50%\\n%TAG\"\n").expect("read");
        assert_eq!(docs[0]["a"], "50%\n%TAG");
    }

    /// Aliases as a chart may use them, for a few repeated labels, stay within the bound.
    #[test]
    fn a_few_aliases_are_read() {
        let docs = documents("labels: &l {app: x}\nselector: *l\n").expect("valid");
        assert_eq!(
            docs,
            [serde_json::json!({"labels": {"app": "x"}, "selector": {"app": "x"}})]
        );
    }
}

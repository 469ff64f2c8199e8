//! Helm 3 release records, decoded without the helm binary.
//!
//! Helm stores each revision of a release as a Secret of type `helm.sh/release.v1`; its data
//! key `release` holds base64(gzip(JSON of the release)) (the API's own base64 of Secret data
//! comes on top, and the client has already undone that). Gzip is optional: Helm reads plain
//! JSON too, so this does the same, telling the two apart by the gzip magic bytes.
//!
//! Only what the migration uses is kept: the values `serviceName`, `taskId` and `agentName`,
//! the manifest, and the names of the delete hooks. Everything else (the chart's templates,
//! the rest of the values, the other hooks) is skipped while parsing and never held, so a
//! record's memory is what is kept, not what its JSON could expand to.

use std::fmt;
use std::io::Read;

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Decompressed records larger than this are refused. A Secret holds at most 1 MiB, and a
/// task's record (its markdown in the values and again in the rendered ConfigMap) a few MiB
/// once decompressed; this bounds a hostile ratio, and so what reading its JSON may take.
const MAX_RECORD_BYTES: u64 = 16 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// At most this many characters of a parser's message go into a report: serde quotes the
/// value it did not expect, which can be most of the record (a string of megabytes where a
/// number belongs).
const MAX_ERROR_CHARS: usize = 300;

/// Why a release record could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the release record is not valid base64: {0}")]
    Base64(String),
    #[error("the release record is gzip-compressed but does not decompress: {0}")]
    Gzip(String),
    #[error("the release record decompresses to more than {0} bytes")]
    TooLarge(u64),
    #[error("the release record is not JSON: {0}")]
    NotJson(String),
    #[error("the release record is JSON but not a Helm release: {0}")]
    Shape(String),
}

/// The parts of a Helm release the migration reads.
#[derive(Clone, PartialEq, Deserialize)]
pub struct Release {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// The revision number.
    pub version: i64,
    pub info: Info,
    pub chart: Chart,
    /// The values given at install/upgrade (the chart's defaults are in `chart.values`). Helm
    /// leaves the key out when none were given (`omitempty`): then it is `Null`, which counts
    /// as no values, not as values that erase the defaults.
    #[serde(default)]
    pub config: Values,
    /// The rendered resources, as multi-document YAML.
    #[serde(default)]
    pub manifest: String,
    /// The names of the hooks `helm uninstall` runs (a `pre-delete` or `post-delete` event),
    /// in the record's order; the other hooks are skipped.
    #[serde(default, rename = "hooks", deserialize_with = "delete_hook_names")]
    pub delete_hooks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Info {
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Chart {
    pub metadata: ChartMetadata,
    #[serde(default)]
    pub values: Values,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChartMetadata {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// The values `serviceName`, `taskId` and `agentName` of a release, as Helm renders the chart
/// with them: the chart's defaults overlaid with the given values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskValues {
    /// `serviceName` when it is a string.
    pub service_name: Option<String>,
    /// `taskId` when it is a string or a number (as JSON writes it).
    pub task_id: Option<String>,
    /// `agentName` when it is a string.
    pub agent_name: Option<String>,
}

/// One layer of chart values (the chart's defaults, or the given ones), as far as the
/// migration reads it. Values can hold secrets, so `Debug` never shows them.
#[derive(Clone, Default, PartialEq)]
pub struct Values(Layer);

#[derive(Clone, Default, PartialEq)]
enum Layer {
    /// Missing or `null`: no values; the layer below shows through.
    #[default]
    Empty,
    /// A map: the keys read from it.
    Map(Keys),
    /// Anything else (a list, a string...): it replaces the layer below, and has no keys.
    Other,
}

/// The keys read from a map of values; each `None` when the map has not the key.
#[derive(Clone, Default, PartialEq)]
struct Keys {
    service_name: Option<Scalar>,
    task_id: Option<Scalar>,
    agent_name: Option<Scalar>,
    /// The names (not the values, which may be secrets) of the other keys but `files`, the
    /// first [`MAX_OTHER_KEYS`] of them, each cut to [`MAX_KEY_CHARS`]; and how many there are.
    others: Vec<String>,
    other_count: usize,
}

/// How many names of values a TaskRun does not carry a report lists.
const MAX_OTHER_KEYS: usize = 8;
const MAX_KEY_CHARS: usize = 64;

/// A value under one of the read keys.
#[derive(Clone, PartialEq)]
enum Scalar {
    Str(String),
    Num(serde_json::Number),
    /// `null`, a boolean, a list or a map: present (it overrides a default), but not read.
    Other,
}

#[derive(Clone, Copy)]
enum Key {
    ServiceName,
    TaskId,
    AgentName,
}

impl Keys {
    fn get(&self, key: Key) -> Option<&Scalar> {
        match key {
            Key::ServiceName => self.service_name.as_ref(),
            Key::TaskId => self.task_id.as_ref(),
            Key::AgentName => self.agent_name.as_ref(),
        }
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Values(<redacted>)")
    }
}

/// Values and the rendered manifest can hold secrets (the legacy chart took an API key), so
/// `Debug` leaves them out.
impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("info", &self.info)
            .field("chart", &self.chart.metadata)
            .field("delete_hooks", &self.delete_hooks)
            .finish_non_exhaustive()
    }
}

impl Release {
    /// The values the chart was rendered with, as far as the migration reads them: the
    /// chart's defaults overlaid with the given ones, maps merged key by key as Helm does.
    pub fn values(&self) -> TaskValues {
        let str_of = |key| match self.value(key) {
            Some(Scalar::Str(s)) => Some(s.clone()),
            _ => None,
        };
        TaskValues {
            service_name: str_of(Key::ServiceName),
            task_id: match self.value(Key::TaskId) {
                Some(Scalar::Str(s)) => Some(s.clone()),
                Some(Scalar::Num(n)) => Some(n.to_string()),
                _ => None,
            },
            agent_name: str_of(Key::AgentName),
        }
    }

    /// The values given at install or upgrade that a TaskRun does not carry (all but
    /// `serviceName`, `taskId`, `agentName` and `files`), as a sentence naming them; `None`
    /// when there are none. A TaskRun runs with the controller's Job template instead.
    pub fn not_carried(&self) -> Option<String> {
        let Layer::Map(given) = &self.config.0 else {
            return None;
        };
        if given.other_count == 0 {
            return None;
        }
        let more = given.other_count.saturating_sub(given.others.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Some(format!(
            "the release was given values a TaskRun does not carry ({}{more}): its task runs \
             with the controller's Job template (its --image and the other flags) instead",
            given.others.join(", ")
        ))
    }

    /// The merged value of `key`: the given one when the given values have it, else the
    /// default. A missing or null layer (Helm omits an empty one) lets the other show through;
    /// a given layer that is not a map replaces the defaults whole.
    fn value(&self, key: Key) -> Option<&Scalar> {
        match (&self.chart.values.0, &self.config.0) {
            (Layer::Map(defaults), Layer::Map(given)) => {
                given.get(key).or_else(|| defaults.get(key))
            }
            (Layer::Map(defaults), Layer::Empty) => defaults.get(key),
            (_, Layer::Map(given)) => given.get(key),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LayerVisitor;
        impl<'de> Visitor<'de> for LayerVisitor {
            type Value = Layer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("chart values")
            }
            fn visit_unit<E>(self) -> Result<Layer, E> {
                Ok(Layer::Empty)
            }
            fn visit_none<E>(self) -> Result<Layer, E> {
                Ok(Layer::Empty)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Layer, A::Error> {
                let mut keys = Keys::default();
                // A repeated key: the last one counts, as in a JSON object read whole.
                while let Some(key) = map.next_key::<KeyName>()? {
                    let slot = match key {
                        KeyName::Read(Key::ServiceName) => &mut keys.service_name,
                        KeyName::Read(Key::TaskId) => &mut keys.task_id,
                        KeyName::Read(Key::AgentName) => &mut keys.agent_name,
                        KeyName::Files => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        KeyName::Other(name) => {
                            keys.other_count += 1;
                            if keys.others.len() < MAX_OTHER_KEYS && !keys.others.contains(&name) {
                                keys.others.push(name);
                            }
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(Layer::Map(keys))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Layer, A::Error> {
                skip_seq(seq).map(|()| Layer::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Layer, E> {
                Ok(Layer::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Layer, E> {
                Ok(Layer::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Layer, E> {
                Ok(Layer::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Layer, E> {
                Ok(Layer::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Layer, E> {
                Ok(Layer::Other)
            }
        }
        d.deserialize_any(LayerVisitor).map(Values)
    }
}

/// A key of a values map: one of the read ones, `files` (rendered into the files ConfigMap,
/// which the migration reads), or another (its name, cut).
enum KeyName {
    Read(Key),
    Files,
    Other(String),
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<KeyName, E> {
                Ok(match key {
                    "serviceName" => KeyName::Read(Key::ServiceName),
                    "taskId" => KeyName::Read(Key::TaskId),
                    "agentName" => KeyName::Read(Key::AgentName),
                    "files" => KeyName::Files,
                    other => KeyName::Other(other.chars().take(MAX_KEY_CHARS).collect()),
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(s))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Num(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Scalar, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Scalar::Other, Scalar::Num))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                skip_seq(seq).map(|()| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A hook, as far as uninstalling reads it.
#[derive(Deserialize)]
struct Hook {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "events", deserialize_with = "any_delete_event")]
    on_delete: bool,
}

fn delete_hook_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct HooksVisitor;
    impl<'de> Visitor<'de> for HooksVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of hooks")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(hook) = seq.next_element::<Hook>()? {
                if hook.on_delete {
                    names.push(hook.name);
                }
            }
            Ok(names)
        }
    }
    d.deserialize_seq(HooksVisitor)
}

/// True when a hook's events include one `helm uninstall` runs.
fn any_delete_event<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct EventsVisitor;
    impl<'de> Visitor<'de> for EventsVisitor {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of hook events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut on_delete = false;
            while let Some(event) = seq.next_element::<DeleteEvent>()? {
                on_delete |= event.0;
            }
            Ok(on_delete)
        }
    }
    d.deserialize_seq(EventsVisitor)
}

/// Whether one hook event is a delete event, read without keeping the string.
struct DeleteEvent(bool);

impl<'de> Deserialize<'de> for DeleteEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl Visitor<'_> for EventVisitor {
            type Value = DeleteEvent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, event: &str) -> Result<DeleteEvent, E> {
                Ok(DeleteEvent(matches!(event, "pre-delete" | "post-delete")))
            }
        }
        d.deserialize_str(EventVisitor)
    }
}

/// Decodes the `release` data of a Helm release Secret (the bytes as the API client hands
/// them over, i.e. after the Secret's own base64).
pub fn decode(data: &[u8]) -> Result<Release, DecodeError> {
    decode_within(data, MAX_RECORD_BYTES)
}

fn decode_within(data: &[u8], max_bytes: u64) -> Result<Release, DecodeError> {
    let trimmed = data.trim_ascii();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|e| DecodeError::Base64(e.to_string()))?;
    let json = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(max_bytes + 1)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Gzip(e.to_string()))?;
        if out.len() as u64 > max_bytes {
            return Err(DecodeError::TooLarge(max_bytes));
        }
        out
    } else {
        raw
    };
    // In one pass, without a tree of the whole record first.
    serde_json::from_slice(&json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::Shape(cut(&e.to_string())),
        _ => DecodeError::NotJson(cut(&e.to_string())),
    })
}

/// A parser's message cut to `MAX_ERROR_CHARS` characters (on a character boundary), `...`
/// marking the cut.
fn cut(message: &str) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        None => message.to_owned(),
        Some((end, _)) => format!("{}...", &message[..end]),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;

    use serde_json::{Value, json};

    pub fn record() -> Value {
        json!({
            "name": "billing-task-7",
            "namespace": "team-a",
            "version": 2,
            "info": {"status": "deployed", "description": "Upgrade complete"},
            "chart": {
                "metadata": {"name": "claude-code", "version": "0.1.0"},
                "values": {"serviceName": "", "job": {"backoffLimit": 3, "enabled": true}},
                "templates": []
            },
            "config": {"serviceName": "billing", "taskId": "7", "job": {"backoffLimit": 1}},
            "manifest": "---\nkind: Job\n",
            "hooks": [{"name": "cleanup", "events": ["pre-delete"]}]
        })
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).expect("in memory");
        enc.finish().expect("in memory")
    }

    /// What Helm writes: base64(gzip(json)).
    pub fn encode(value: &Value) -> Vec<u8> {
        encode_json(&serde_json::to_vec(value).expect("json"))
    }

    fn encode_json(json: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(gzip(json))
            .into_bytes()
    }

    #[test]
    fn decodes_what_helm_writes() {
        let release = decode(&encode(&record())).expect("decodes");
        assert_eq!(release.name, "billing-task-7");
        assert_eq!(release.namespace, "team-a");
        assert_eq!(release.version, 2);
        assert_eq!(release.info.status, "deployed");
        assert_eq!(release.chart.metadata.name, "claude-code");
        assert_eq!(release.delete_hooks, ["cleanup"]);
        assert_eq!(release.manifest, "---\nkind: Job\n");
    }

    #[test]
    fn uncompressed_json_is_read_too() {
        let json = serde_json::to_vec(&record()).expect("json");
        let data = base64::engine::general_purpose::STANDARD.encode(json);
        let release = decode(data.as_bytes()).expect("decodes");
        assert_eq!(release.name, "billing-task-7");
    }

    #[test]
    fn surrounding_whitespace_is_tolerated() {
        let mut data = encode(&record());
        data.push(b'\n');
        data.insert(0, b' ');
        let release = decode(&data).expect("decodes");
        assert_eq!(release.name, "billing-task-7");
        assert_eq!(release.version, 2);
        assert_eq!(
            release.values(),
            task_values(Some("billing"), Some("7"), None)
        );
    }

    #[test]
    fn corrupt_base64_is_reported_as_such() {
        let err = decode(b"H4sI!!not base64").expect_err("corrupt");
        assert!(matches!(err, DecodeError::Base64(_)), "{err:?}");
        assert!(err.to_string().contains("not valid base64"), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_reported_as_such() {
        let mut zipped = gzip(br#"{"name":"x"}"#);
        zipped.truncate(12);
        zipped.extend_from_slice(&[0xff; 8]);
        let data = base64::engine::general_purpose::STANDARD.encode(zipped);
        let err = decode(data.as_bytes()).expect_err("corrupt");
        assert!(matches!(err, DecodeError::Gzip(_)), "{err:?}");
        assert!(err.to_string().contains("does not decompress"), "{err}");
    }

    #[test]
    fn text_that_is_not_json_is_reported_as_such() {
        let data = base64::engine::general_purpose::STANDARD.encode(gzip(b"kind: Release\n"));
        let err = decode(data.as_bytes()).expect_err("not json");
        assert!(matches!(err, DecodeError::NotJson(_)), "{err:?}");
    }

    #[test]
    fn json_of_another_shape_is_reported_with_the_missing_part() {
        let mut value = record();
        value["chart"]["metadata"] = json!(null);
        let err = decode(&encode(&value)).expect_err("shape");
        assert!(matches!(err, DecodeError::Shape(_)), "{err:?}");
        assert!(err.to_string().contains("not a Helm release"), "{err}");

        let err = decode(&encode(&json!([1, 2, 3]))).expect_err("shape");
        assert!(matches!(err, DecodeError::Shape(_)), "{err:?}");
    }

    #[test]
    fn a_parsers_message_is_cut_short() {
        // serde quotes the string it did not expect: here, all of it.
        let mut value = record();
        value["version"] = json!("é".repeat(100_000));
        let err = decode(&encode(&value)).expect_err("shape");
        let DecodeError::Shape(message) = &err else {
            panic!("{err:?}")
        };
        assert!(
            message.starts_with("invalid type: string \"éé"),
            "{message}"
        );
        assert!(message.ends_with("..."), "{message}");
        assert_eq!(message.chars().count(), MAX_ERROR_CHARS + 3);
        // A short message stays whole.
        assert_eq!(cut("expected a number"), "expected a number");
        let exact = "x".repeat(MAX_ERROR_CHARS);
        assert_eq!(cut(&exact), exact);
        assert_eq!(
            cut("ü".repeat(1000).as_str()),
            format!("{}...", "ü".repeat(300))
        );
    }

    #[test]
    fn only_the_read_values_are_kept() {
        // A forged record: some KB of gzip that expand into lists of millions of elements
        // and a map of many keys, where values, hooks and the chart's templates belong. They
        // are skipped while parsing; nothing in the release can hold them.
        let zeros = |n| vec!["0"; n].join(",");
        let many_keys: Vec<String> = (0..100_000).map(|i| format!("\"k{i}\":[{{}}]")).collect();
        let json = format!(
            r#"{{"name":"billing-task-7","namespace":"team-a","version":2,"info":{{"status":"deployed"}},
            "chart":{{"metadata":{{"name":"claude-code"}},"values":{{{keys},"agentName":"claude-1"}},"templates":[{templates}]}},
            "config":[{zeros}],
            "hooks":[{hooks}{{"name":"cleanup","events":["post-delete"]}}]}}"#,
            keys = many_keys.join(","),
            zeros = zeros(5_000_000),
            templates = zeros(500_000),
            hooks = r#"{"name":"x","events":["pre-install"]},"#.repeat(50_000),
        );
        assert!(json.len() < MAX_RECORD_BYTES as usize, "{}", json.len());
        let release = decode(&encode_json(json.as_bytes())).expect("decodes");
        // Given values that are not a map replace the defaults: no agentName.
        assert!(release.config == Values(Layer::Other));
        assert_eq!(release.values(), TaskValues::default());
        assert_eq!(release.delete_hooks, ["cleanup"]);

        // The same map of defaults, with the given values a map holding a huge list: only the
        // three read keys are kept.
        let json = format!(
            r#"{{"name":"billing-task-7","version":2,"info":{{"status":"deployed"}},
            "chart":{{"metadata":{{"name":"claude-code"}},"values":{{{keys},"agentName":"claude-1"}}}},
            "config":{{"junk":[{zeros}],"serviceName":"billing","taskId":7,"nested":{{"serviceName":[{nested}]}}}}}}"#,
            keys = many_keys.join(","),
            zeros = zeros(5_000_000),
            nested = zeros(1_000_000),
        );
        assert!(json.len() < MAX_RECORD_BYTES as usize, "{}", json.len());
        let release = decode(&encode_json(json.as_bytes())).expect("decodes");
        assert!(
            release.config
                == Values(Layer::Map(Keys {
                    service_name: Some(Scalar::Str("billing".to_owned())),
                    task_id: Some(Scalar::Num(7.into())),
                    agent_name: None,
                    others: vec!["junk".into(), "nested".into()],
                    other_count: 2,
                }))
        );
        // Of the 100,000 other keys, the first names and their number.
        let Values(Layer::Map(defaults)) = &release.chart.values else {
            panic!("a map of defaults");
        };
        assert!(defaults.agent_name == Some(Scalar::Str("claude-1".to_owned())));
        assert_eq!(defaults.others.len(), MAX_OTHER_KEYS);
        assert_eq!(defaults.other_count, 100_000);
        assert_eq!(
            release.values(),
            task_values(Some("billing"), Some("7"), Some("claude-1"))
        );
    }

    #[test]
    fn values_a_taskrun_does_not_carry_are_named_and_never_shown() {
        let with_config = |config: &str| {
            let json = format!(
                r#"{{"name":"billing-task-7","version":2,"info":{{"status":"deployed"}},
                "chart":{{"metadata":{{"name":"claude-code"}},"values":{{"image":"legacy","attempt":"1"}}}},
                "config":{config}}}"#
            );
            decode(&encode_json(json.as_bytes())).expect("decodes")
        };
        // The chart's own defaults are not the release's choice; the read values and the
        // files (carried in the files ConfigMap) are carried.
        for carried in [
            "null",
            "{}",
            r#"{"serviceName":"billing","taskId":7,"agentName":"a","files":{"task.md":"x"}}"#,
        ] {
            assert_eq!(with_config(carried).not_carried(), None, "{carried}");
        }
        let said = with_config(r#"{"image":"r/c:pinned","apiKey":"s3cret","taskId":7}"#)
            .not_carried()
            .expect("told");
        assert!(
            said.starts_with(
                "the release was given values a TaskRun does not carry (image, apiKey):"
            ),
            "{said}"
        );
        assert!(
            !said.contains("s3cret") && !said.contains("pinned"),
            "{said}"
        );
        let many: Vec<String> = (0..20).map(|i| format!("\"v{i}\":{i}")).collect();
        let said = with_config(&format!("{{{}}}", many.join(",")))
            .not_carried()
            .expect("told");
        assert!(
            said.contains("(v0, v1, v2, v3, v4, v5, v6, v7 and 12 more)"),
            "{said}"
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let huge = vec![b' '; 100_000];
        let data = base64::engine::general_purpose::STANDARD.encode(gzip(&huge));
        assert_eq!(
            decode_within(data.as_bytes(), 1000),
            Err(DecodeError::TooLarge(1000))
        );
    }

    fn values_of(config: Value, defaults: Value) -> TaskValues {
        let mut value = record();
        value["config"] = config;
        value["chart"]["values"] = defaults;
        decode(&encode(&value)).expect("decodes").values()
    }

    fn task_values(service: Option<&str>, task: Option<&str>, agent: Option<&str>) -> TaskValues {
        TaskValues {
            service_name: service.map(str::to_owned),
            task_id: task.map(str::to_owned),
            agent_name: agent.map(str::to_owned),
        }
    }

    #[test]
    fn values_are_the_defaults_overlaid_with_the_given_ones() {
        let release = decode(&encode(&record())).expect("decodes");
        assert_eq!(
            release.values(),
            task_values(Some("billing"), Some("7"), None)
        );
        let defaults = json!({"serviceName": "", "taskId": 7, "agentName": "claude-default"});
        // Key by key: what is given wins, the rest are the defaults.
        assert_eq!(
            values_of(json!({"serviceName": "billing"}), defaults.clone()),
            task_values(Some("billing"), Some("7"), Some("claude-default"))
        );
        // A given null, list or map erases the default; it is no string.
        for erased in [json!(null), json!([1]), json!({"a": 1}), json!(true)] {
            assert_eq!(
                values_of(json!({"agentName": erased}), defaults.clone()).agent_name,
                None,
                "{erased}"
            );
        }
        // Numbers read as JSON writes them; other types are not read.
        assert_eq!(
            values_of(json!({"taskId": -3}), json!({}))
                .task_id
                .as_deref(),
            Some("-3")
        );
        assert_eq!(
            values_of(json!({"taskId": 7.5}), json!({}))
                .task_id
                .as_deref(),
            Some("7.5")
        );
        assert_eq!(
            values_of(json!({"taskId": 7.0}), json!({}))
                .task_id
                .as_deref(),
            Some("7.0")
        );
        assert_eq!(values_of(json!({"taskId": false}), json!({})).task_id, None);
        assert_eq!(
            values_of(json!({"serviceName": 7}), json!({})).service_name,
            None
        );
        // Given values that are no map replace the defaults whole; defaults that are no map
        // leave the given ones.
        assert_eq!(
            values_of(json!([1]), defaults.clone()),
            TaskValues::default()
        );
        assert_eq!(
            values_of(json!("x"), defaults.clone()),
            TaskValues::default()
        );
        assert_eq!(
            values_of(json!({"agentName": "a"}), json!([1]))
                .agent_name
                .as_deref(),
            Some("a")
        );
        assert_eq!(values_of(json!(null), json!(3)), TaskValues::default());
        // A repeated key: the last one counts.
        let json = br#"{"name":"billing-task-7","version":1,"info":{"status":"deployed"},"chart":{"metadata":{"name":"claude-code"}},"config":{"agentName":"a","agentName":"b"}}"#;
        let release = decode(&encode_json(json)).expect("decodes");
        assert_eq!(release.values().agent_name.as_deref(), Some("b"));
    }

    #[test]
    fn without_given_values_the_chart_defaults_stay() {
        // `helm install` without --set or -f: Helm writes no `config` key at all.
        let mut value = record();
        value.as_object_mut().expect("an object").remove("config");
        value["chart"]["values"] =
            json!({"serviceName": "billing", "taskId": "7", "agentName": "claude-1", "job": {}});
        let defaults = task_values(Some("billing"), Some("7"), Some("claude-1"));
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), defaults);
        value["config"] = Value::Null;
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), defaults);
        // Neither given values nor chart defaults: no values.
        value["chart"]
            .as_object_mut()
            .expect("an object")
            .remove("values");
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), TaskValues::default());
    }

    #[test]
    fn debug_never_shows_values() {
        let mut value = record();
        value["config"]["secrets"] = json!({"anthropicApiKey": "sk-secret"});
        value["manifest"] = json!("kind: Secret\nstringData:\n  key: sk-rendered\n");
        let release = decode(&encode(&value)).expect("decodes");
        let shown = format!("{release:?}");
        assert!(
            !shown.contains("sk-secret") && !shown.contains("sk-rendered"),
            "{shown}"
        );
        assert!(shown.contains("billing-task-7"), "{shown}");
    }
}

//! Helm 3 release records, decoded without the helm binary.
//!
//! Helm stores each revision of a release as a Secret of type `helm.sh/release.v1`; its data
//! key `release` holds base64(gzip(JSON of the release)) (the API's own base64 of Secret data
//! comes on top, and the client has already undone that). Gzip is optional: Helm reads plain
//! JSON too, so this does the same, telling the two apart by the gzip magic bytes.

use std::fmt;
use std::io::Read;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// Decompressed records larger than this are refused. A Secret holds at most 1 MiB, and a
/// task's record (its markdown in the values and again in the rendered ConfigMap) a few MiB
/// once decompressed; this bounds a hostile ratio, and so what reading its JSON may take.
const MAX_RECORD_BYTES: u64 = 16 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

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
    #[serde(default)]
    pub hooks: Vec<Hook>,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Hook {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// Chart values. They can hold secrets, so `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Values(pub Value);

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
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

impl Release {
    /// The values the chart was rendered with: the chart's defaults overlaid with the given
    /// ones, maps merged key by key as Helm does.
    pub fn values(&self) -> Value {
        let mut merged = self.chart.values.0.clone();
        // A missing or null `config` (or chart `values`) is an empty map: Helm omits it when
        // there is nothing in it.
        if !self.config.0.is_null() {
            overlay(&mut merged, &self.config.0);
        }
        if merged.is_null() {
            merged = Value::Object(serde_json::Map::new());
        }
        merged
    }
}

fn overlay(base: &mut Value, top: &Value) {
    match (base, top) {
        (Value::Object(base), Value::Object(top)) => {
            for (key, value) in top {
                overlay(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, top) => *base = top.clone(),
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
        serde_json::error::Category::Data => DecodeError::Shape(e.to_string()),
        _ => DecodeError::NotJson(e.to_string()),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;

    use serde_json::json;

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
        let json = serde_json::to_vec(value).expect("json");
        base64::engine::general_purpose::STANDARD
            .encode(gzip(&json))
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
        assert_eq!(release.hooks[0].events, ["pre-delete"]);
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
        assert!(decode(&data).is_ok());
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
    fn a_decompression_bomb_is_refused() {
        let huge = vec![b' '; 100_000];
        let data = base64::engine::general_purpose::STANDARD.encode(gzip(&huge));
        assert_eq!(
            decode_within(data.as_bytes(), 1000),
            Err(DecodeError::TooLarge(1000))
        );
    }

    #[test]
    fn values_are_the_defaults_overlaid_with_the_given_ones() {
        let release = decode(&encode(&record())).expect("decodes");
        assert_eq!(
            release.values(),
            json!({"serviceName": "billing", "taskId": "7", "job": {"backoffLimit": 1, "enabled": true}})
        );
    }

    #[test]
    fn without_given_values_the_chart_defaults_stay() {
        // `helm install` without --set or -f: Helm writes no `config` key at all.
        let mut value = record();
        value.as_object_mut().expect("an object").remove("config");
        let defaults = value["chart"]["values"].clone();
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), defaults);
        value["config"] = Value::Null;
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), defaults);
        // Neither given values nor chart defaults: an empty map, still an object.
        value["chart"]
            .as_object_mut()
            .expect("an object")
            .remove("values");
        let release = decode(&encode(&value)).expect("decodes");
        assert_eq!(release.values(), json!({}));
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

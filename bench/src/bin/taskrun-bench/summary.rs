//! The figures: the keys with their targets, printed as a table and written as JSON.

use std::path::Path;

use serde_json::{Map, Value, json};

/// (key, target, higher is better)
const TARGETS: [(&str, f64, bool); 8] = [
    ("webhook_throughput_vs_ceiling", 0.8, true),
    ("webhook_p99_ms", 1.0, false),
    ("webhook_p99_ratio_100k_vs_1k", 1.2, false),
    ("webhook_rss_mib_10k", 32.0, false),
    ("admission_added_p50_ms", 2.0, false),
    ("controller_vs_ceiling", 0.8, true),
    ("speedup_vs_helm", 20.0, true),
    ("controller_rss_mib_10k", 64.0, false),
];

#[derive(Default)]
pub struct Summary {
    figures: Map<String, Value>,
    details: Map<String, Value>,
}

impl Summary {
    /// One of the figures.
    pub fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.to_owned(), json!(round(value)));
    }

    /// Supporting detail (rates, percentiles, counts, notes).
    pub fn detail(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<32} {:>12} {:>10}  {}\n",
            "figure", "value", "target", "met"
        );
        for (key, target, higher) in TARGETS {
            let value = self.figures.get(key).and_then(Value::as_f64);
            let (shown, met) = match value {
                Some(v) => (
                    format!("{v:.3}"),
                    if met(v, target, higher) { "yes" } else { "NO" },
                ),
                None => ("-".to_owned(), "not measured"),
            };
            let bound = if higher { ">=" } else { "<=" };
            out += &format!("{key:<32} {shown:>12} {bound:>3}{target:>7}  {met}\n");
        }
        out
    }

    /// Writes `{<figures>..., "details": {...}, "targets_met": {...}}`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = self.figures.clone();
        let met: Map<String, Value> = TARGETS
            .iter()
            .filter_map(|(key, target, higher)| {
                let v = self.figures.get(*key)?.as_f64()?;
                Some(((*key).to_owned(), json!(met(v, *target, *higher))))
            })
            .collect();
        out.insert("targets_met".into(), Value::Object(met));
        out.insert("details".into(), Value::Object(self.details.clone()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
        Ok(())
    }
}

fn met(v: f64, target: f64, higher: bool) -> bool {
    if higher { v >= target } else { v <= target }
}

pub fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

//! The module's configuration (its twin's desired properties) and its validation.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most lagged copies accepted.
pub const MAX_LAGS: usize = 64;
/// Longest moving window accepted.
pub const MAX_WINDOW: usize = 10_000;

/// The whole configuration of `feature-pipeline`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineConfig {
    /// The tags of the feature vector, in the model's order.
    pub tags: Vec<String>,
    /// Autoscaling; none when absent.
    #[serde(default)]
    pub scaling: Option<ScalingConfig>,
    /// Moving-average window (samples) for every tag; `0` or `1` = none.
    #[serde(default)]
    pub window: usize,
    /// Per-tag window, overriding `window`.
    #[serde(default)]
    pub windows: HashMap<String, usize>,
    /// Lagged copies appended (dynamic PCA): the vector is `[v(t), v(t-1), …, v(t-lags)]`.
    #[serde(default)]
    pub lags: usize,
    /// Range checks per tag, on the raw value.
    #[serde(default)]
    pub ranges: HashMap<String, RangeCheck>,
    /// What an out-of-range value does.
    #[serde(default)]
    pub range_action: RangeAction,
    /// How many consecutive samples a missing value (absent, `null`, NaN) is replaced by the last
    /// good one before the vector is marked invalid.
    #[serde(default)]
    pub hold_samples: u32,
    /// How often counters go to the reported properties.
    #[serde(default = "default_report_every", with = "humantime_serde")]
    pub report_every: Duration,
}

fn default_report_every() -> Duration {
    Duration::from_secs(10)
}

/// Autoscaling: `x' = (x - mean) / sd`, from the config or from a model's metadata file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingConfig {
    /// Means, one per tag.
    #[serde(default)]
    pub mean: Option<Vec<f64>>,
    /// Standard deviations, one per tag, positive.
    #[serde(default)]
    pub sd: Option<Vec<f64>>,
    /// A JSON file with `mean` and `sd` arrays (and optionally `tags`, checked against ours);
    /// relative paths are resolved against the module's working directory.
    #[serde(default)]
    pub from_metadata: Option<PathBuf>,
}

/// Allowed range of a tag's raw value; either bound may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeCheck {
    /// Lowest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
}

/// What an out-of-range value does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RangeAction {
    /// Mark the vector invalid, with a reason naming the tag.
    #[default]
    Invalid,
    /// Clamp the value into the range; the vector stays valid.
    Clamp,
}

/// Why a configuration is refused or cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is invalid.
    #[error("{field}: {problem}")]
    Invalid {
        /// JSON path of the field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The metadata file cannot be read.
    #[error("scaling.fromMetadata: cannot read {path}")]
    MetadataRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file is not the JSON expected.
    #[error("scaling.fromMetadata: {path} is not valid metadata")]
    MetadataParse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The part of a model's metadata file the pipeline reads.
#[derive(Debug, Deserialize)]
struct Metadata {
    mean: Vec<f64>,
    sd: Vec<f64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Resolved scaling: means and standard deviations, one per tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations.
    pub sd: Vec<f64>,
}

impl PipelineConfig {
    /// Checks what serde cannot, without touching files.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.tags.is_empty() {
            return Err(invalid("tags", "must name at least one tag"));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.tags.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(invalid("tags", format!("{dup:?} appears twice")));
        }
        if self.lags > MAX_LAGS {
            return Err(invalid("lags", format!("at most {MAX_LAGS}")));
        }
        if self.window > MAX_WINDOW {
            return Err(invalid("window", format!("at most {MAX_WINDOW}")));
        }
        for (tag, w) in &self.windows {
            if !seen.contains(tag.as_str()) {
                return Err(invalid(format!("windows.{tag}"), "not one of tags"));
            }
            if *w > MAX_WINDOW {
                return Err(invalid(
                    format!("windows.{tag}"),
                    format!("at most {MAX_WINDOW}"),
                ));
            }
        }
        for (tag, r) in &self.ranges {
            if !seen.contains(tag.as_str()) {
                return Err(invalid(format!("ranges.{tag}"), "not one of tags"));
            }
            if r.min.is_some_and(f64::is_nan) || r.max.is_some_and(f64::is_nan) {
                return Err(invalid(format!("ranges.{tag}"), "bounds must be numbers"));
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max)
                && lo > hi
            {
                return Err(invalid(format!("ranges.{tag}"), "min is above max"));
            }
        }
        if self.report_every.is_zero() {
            return Err(invalid("reportEvery", "must be positive"));
        }
        if let Some(s) = &self.scaling {
            match (&s.mean, &s.sd, &s.from_metadata) {
                (Some(m), Some(d), None) => check_scaling(&self.tags, m, d, "scaling")?,
                (None, None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        "scaling",
                        "give either mean and sd, or fromMetadata",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The scaling to apply, reading the metadata file when configured; relative paths are
    /// resolved against `base`.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or its arrays do not match the tags.
    pub fn resolve_scaling(&self, base: &Path) -> Result<Option<Scaling>, ConfigError> {
        let Some(s) = &self.scaling else {
            return Ok(None);
        };
        if let (Some(mean), Some(sd)) = (&s.mean, &s.sd) {
            return Ok(Some(Scaling {
                mean: mean.clone(),
                sd: sd.clone(),
            }));
        }
        let Some(rel) = &s.from_metadata else {
            return Ok(None);
        };
        let path = base.join(rel);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::MetadataRead {
            path: path.clone(),
            source,
        })?;
        let md: Metadata =
            serde_json::from_str(&text).map_err(|source| ConfigError::MetadataParse {
                path: path.clone(),
                source,
            })?;
        if let Some(tags) = &md.tags
            && *tags != self.tags
        {
            return Err(invalid(
                "scaling.fromMetadata",
                format!(
                    "{} lists other tags (or another order) than tags",
                    path.display()
                ),
            ));
        }
        check_scaling(&self.tags, &md.mean, &md.sd, "scaling.fromMetadata")?;
        Ok(Some(Scaling {
            mean: md.mean,
            sd: md.sd,
        }))
    }
}

fn check_scaling(
    tags: &[String],
    mean: &[f64],
    sd: &[f64],
    field: &str,
) -> Result<(), ConfigError> {
    if mean.len() != tags.len() || sd.len() != tags.len() {
        return Err(invalid(
            field,
            format!(
                "mean has {} and sd {} entries; tags has {}",
                mean.len(),
                sd.len(),
                tags.len()
            ),
        ));
    }
    if mean.iter().any(|m| !m.is_finite()) {
        return Err(invalid(field, "mean must be finite"));
    }
    if sd.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
        return Err(invalid(field, "sd must be positive and finite"));
    }
    Ok(())
}

impl edge_sdk::ModuleConfig for PipelineConfig {
    fn validate(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }
}

//! Target discovery: `static_configs` and `file_sd_configs` (JSON or YAML files, globs in the
//! last path element, re-read when their modification time changes — checked every poll
//! interval — and in full every `refresh_interval`). A file that fails to parse keeps its
//! previous targets, as in Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::Deserialize;

use crate::config::{FileSdConfig, StaticConfig};
use crate::target::{ADDRESS_LABEL, TargetGroup};

/// Target groups of `static_configs`.
pub fn static_groups(cfgs: &[StaticConfig]) -> Vec<TargetGroup> {
    cfgs.iter()
        .enumerate()
        .map(|(i, s)| TargetGroup {
            source: format!("static/{i}"),
            targets: s
                .targets
                .iter()
                .map(|t| BTreeMap::from([(ADDRESS_LABEL.to_string(), t.clone())]))
                .collect(),
            labels: s.labels.clone(),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Parses one file_sd file (JSON when the name ends in `.json`, YAML otherwise).
pub fn parse_file_sd(path: &str, content: &[u8]) -> Result<Vec<TargetGroup>, String> {
    let groups: Vec<FileGroup> = if path.to_ascii_lowercase().ends_with(".json") {
        serde_json::from_slice(content).map_err(|e| format!("{path}: {e}"))?
    } else if content.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        serde_yaml_ng::from_slice(content).map_err(|e| format!("{path}: {e}"))?
    };
    let mut out = Vec::with_capacity(groups.len());
    for (i, g) in groups.into_iter().enumerate() {
        for name in g.labels.keys() {
            if name.is_empty() {
                return Err(format!("{path}: group {i}: empty label name"));
            }
        }
        let mut labels = g.labels;
        labels.insert("__meta_filepath".to_string(), path.to_string());
        out.push(TargetGroup {
            source: format!("{path}:{i}"),
            targets: g
                .targets
                .into_iter()
                .map(|t| BTreeMap::from([(ADDRESS_LABEL.to_string(), t)]))
                .collect(),
            labels,
        });
    }
    Ok(out)
}

#[derive(Debug)]
struct FileState {
    mtime: Option<SystemTime>,
    len: u64,
    groups: Vec<TargetGroup>,
}

/// The file_sd provider of one `file_sd_configs` entry.
#[derive(Debug)]
pub struct FileSd {
    cfg: FileSdConfig,
    files: HashMap<PathBuf, FileState>,
    last_full: Option<Instant>,
}

impl FileSd {
    pub fn new(cfg: FileSdConfig) -> FileSd {
        FileSd {
            cfg,
            files: HashMap::new(),
            last_full: None,
        }
    }

    fn matched_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.cfg.files {
            match glob::glob(pattern) {
                Ok(paths) => out.extend(paths.flatten()),
                Err(e) => tracing::warn!(pattern = %pattern, error = %e, "invalid file_sd pattern"),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Re-reads changed files (all of them when `refresh_interval` has passed). True when the
    /// set of target groups changed.
    pub fn refresh(&mut self) -> bool {
        let full = self
            .last_full
            .is_none_or(|t| t.elapsed() >= self.cfg.refresh_interval.to_std());
        if full {
            self.last_full = Some(Instant::now());
        }
        let paths = self.matched_paths();
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        changed |= self.files.len() != before;
        for p in paths {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.as_ref().map_or(0, |m| m.len());
            if let Some(st) = self.files.get(&p)
                && !full
                && st.mtime == mtime
                && st.len == len
            {
                continue;
            }
            let name = p.display().to_string();
            let groups = match std::fs::read(&p)
                .map_err(|e| format!("{name}: {e}"))
                .and_then(|c| parse_file_sd(&name, &c))
            {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(file = %name, error = %e, "file_sd: error reading file; keeping its previous targets");
                    match self.files.get_mut(&p) {
                        Some(st) => {
                            st.mtime = mtime;
                            st.len = len;
                        }
                        None => {
                            self.files.insert(
                                p,
                                FileState {
                                    mtime,
                                    len,
                                    groups: Vec::new(),
                                },
                            );
                        }
                    }
                    continue;
                }
            };
            changed |= self.files.get(&p).is_none_or(|st| st.groups != groups);
            self.files.insert(p, FileState { mtime, len, groups });
        }
        changed
    }

    /// The current groups of every matched file.
    pub fn groups(&self) -> Vec<TargetGroup> {
        let mut keys: Vec<&PathBuf> = self.files.keys().collect();
        keys.sort();
        keys.into_iter()
            .flat_map(|k| self.files[k].groups.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;

    #[test]
    fn parses_json_and_yaml() {
        let g = parse_file_sd(
            "/x/a.json",
            br#"[{"targets": ["h:1", "h:2"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].targets.len(), 2);
        assert_eq!(
            g[0].labels.get("__meta_filepath").map(String::as_str),
            Some("/x/a.json")
        );
        let g = parse_file_sd(
            "/x/a.yml",
            b"- targets: [h:1]\n  labels: {a: b}\n- targets: [h:3]\n",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert!(parse_file_sd("/x/a.yml", b"- targetz: [h:1]\n").is_err());
        assert!(parse_file_sd("/x/a.yml", b"").unwrap().is_empty());
    }

    #[test]
    fn refresh_detects_changes_and_keeps_targets_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("*.json").display().to_string();
        let mut sd = FileSd::new(FileSdConfig {
            files: vec![pattern],
            refresh_interval: Duration::from_secs(3600),
        });
        assert!(!sd.refresh(), "no files yet");
        std::fs::write(dir.path().join("a.json"), r#"[{"targets": ["h:1"]}]"#).unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.groups().len(), 1);
        assert!(!sd.refresh(), "unchanged");
        std::fs::write(
            dir.path().join("a.json"),
            r#"[{"targets": ["h:1", "h:22"]}]"#,
        )
        .unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.groups()[0].targets.len(), 2);
        std::fs::write(dir.path().join("a.json"), "not json at all").unwrap();
        assert!(!sd.refresh());
        assert_eq!(sd.groups()[0].targets.len(), 2, "kept previous targets");
        std::fs::write(dir.path().join("b.json"), r#"[{"targets": ["h:3"]}]"#).unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.groups().len(), 2);
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.groups().len(), 1);
    }
}

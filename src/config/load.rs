//! Builds the figment stack and turns every figment/serde/validation error into a
//! [`ConfigProblem`] that names the file (or environment variable), the key and the fix.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::{Config, ConfigError, ConfigProblem};

/// Top-level keys the environment may set; other `INGESTD_*` variables (e.g. those of
/// `deploy/local/services`) are not configuration and are ignored.
const ENV_SECTIONS: [&str; 8] = [
    "redis",
    "source",
    "http",
    "log",
    "shutdown",
    "dead_letter",
    "pipelines",
    "spool",
];

/// A validated configuration and the figment it came from (for provenance).
pub struct LoadedConfig {
    pub config: Config,
    /// Files that were read, in merge order.
    pub files: Vec<PathBuf>,
}

/// Loads defaults < `config_path` (or `./ingestd.toml` if present) < every
/// `pipelines_dir/*.toml` < `INGESTD_*` environment, then validates.
pub fn load(config_path: Option<&Path>, pipelines_dir: &Path) -> Result<LoadedConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut figment = Figment::from(Serialized::defaults(Config::default()));

    match config_path {
        Some(path) if !path.is_file() => problems.push(ConfigProblem {
            origin: path.display().to_string(),
            key: "-".to_string(),
            reason: "config file not found (check --config)".to_string(),
        }),
        Some(path) => {
            files.push(path.to_path_buf());
            figment = figment.merge(Toml::file_exact(path));
        }
        None => {
            let default_path = Path::new("ingestd.toml");
            if default_path.is_file() {
                files.push(default_path.to_path_buf());
                figment = figment.merge(Toml::file_exact(default_path));
            }
        }
    }

    match pipeline_files(pipelines_dir) {
        Ok(pipeline_paths) => {
            for path in pipeline_paths {
                files.push(path.clone());
                figment = figment.merge(PipelineFile::new(path));
            }
        }
        Err(reason) => problems.push(ConfigProblem {
            origin: pipelines_dir.display().to_string(),
            key: "-".to_string(),
            reason,
        }),
    }

    figment = figment.merge(Env::prefixed("INGESTD_").split("__").filter(|key| {
        // Depending on figment's order, the key may already be split into dots.
        let raw = key.as_str();
        let section = raw
            .split("__")
            .next()
            .unwrap_or("")
            .split('.')
            .next()
            .unwrap_or("");
        ENV_SECTIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(section))
    }));

    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }

    let config: Config = match figment.extract() {
        Ok(config) => config,
        Err(error) => {
            let problems = error
                .into_iter()
                .map(|error| figment_problem(&figment, error))
                .collect();
            return Err(ConfigError { problems });
        }
    };

    for (key, reason) in config.validate() {
        problems.push(ConfigProblem {
            origin: origin_of(&figment, &key),
            key,
            reason,
        });
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(LoadedConfig { config, files })
}

/// `*.toml` in the directory, sorted so merges are deterministic. A missing directory
/// is not an error (the pipelines may come from the config file).
fn pipeline_files(directory: &Path) -> Result<Vec<PathBuf>, String> {
    if !directory.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot read the pipelines directory: {error}"))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|error| format!("cannot read the pipelines directory: {error}"))?;
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn figment_problem(figment: &Figment, error: figment::Error) -> ConfigProblem {
    let mut key_parts = error.path.clone();
    if let figment::error::Kind::MissingField(field) = &error.kind {
        key_parts.push(field.to_string());
    }
    let key = if key_parts.is_empty() {
        "-".to_string()
    } else {
        key_parts.join(".")
    };
    let origin = match &error.metadata {
        Some(metadata) => describe_origin(metadata, &error.profile, &error.path),
        None => origin_of(figment, &key),
    };
    let mut reason = error.kind.to_string();
    if matches!(error.kind, figment::error::Kind::UnknownField(..)) {
        reason.push_str(" (remove it or fix its spelling)");
    }
    if reason.contains("duration") || reason.contains("unit") {
        reason.push_str(" (e.g. \"50ms\", \"2s\", \"1m\")");
    }
    ConfigProblem {
        origin,
        key,
        reason,
    }
}

/// Where a key's value came from: a file path, an environment variable, or the defaults.
fn origin_of(figment: &Figment, key: &str) -> String {
    // Walk up the key until some provider is known to have set it.
    let mut candidate = key.to_string();
    loop {
        if let Some(metadata) = figment.find_metadata(&candidate) {
            let parts: Vec<String> = candidate.split('.').map(str::to_string).collect();
            return describe_origin(metadata, &Profile::Default.into(), &parts);
        }
        match candidate.rsplit_once('.') {
            Some((parent, _)) => candidate = parent.to_string(),
            None => return "configuration".to_string(),
        }
    }
}

fn describe_origin(metadata: &Metadata, profile: &Option<Profile>, path: &[String]) -> String {
    match &metadata.source {
        Some(Source::File(path)) => relative_display(path),
        Some(Source::Custom(text)) => text.clone(),
        Some(Source::Code(_)) | None if metadata.name.contains("environment") => {
            let _ = profile;
            format!("environment INGESTD_{}", path.join("__").to_uppercase())
        }
        _ => metadata.name.to_string(),
    }
}

fn relative_display(path: &Path) -> String {
    let current = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&current)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A `pipelines/NAME.toml` file: its top-level table is the pipeline `NAME`.
struct PipelineFile {
    path: PathBuf,
    name: String,
}

impl PipelineFile {
    fn new(path: PathBuf) -> PipelineFile {
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        PipelineFile { path, name }
    }
}

impl Provider for PipelineFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("pipeline file", Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let by_profile = Toml::file_exact(&self.path).data()?;
        let mut nested = Map::new();
        for (profile, table) in by_profile {
            let mut pipelines = Dict::new();
            pipelines.insert(self.name.clone(), Value::from(table));
            let mut root = Dict::new();
            root.insert("pipelines".to_string(), Value::from(pipelines));
            nested.insert(profile, root);
        }
        Ok(nested)
    }
}

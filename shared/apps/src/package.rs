//! App packages from disk: one JSON file (`{"manifest": …, "objects": […], "views": […],
//! "flows": […]}`), or a directory with `manifest.json` and one JSON file per definition under
//! `objects/`, `views/` and `flows/` (read in name order).

use std::path::Path;

use fleet_protocol::{AppPackage, Checked, Rejected, parse_value};
use serde_json::{Map, Value};

/// Why a package could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error (missing file, permissions).
        #[source]
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path} is not JSON")]
    Json {
        /// The file.
        path: String,
        /// The parse error, with its line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The package is not valid (every issue, with paths).
    #[error(transparent)]
    Invalid(#[from] Rejected),
}

fn read_json(path: &Path) -> Result<Value, PackageError> {
    let text = std::fs::read_to_string(path).map_err(|source| PackageError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| PackageError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// The package document at `path` (a file, or a directory assembled into one document),
/// before validation.
pub fn document(path: &Path) -> Result<Value, PackageError> {
    if !path.is_dir() {
        return read_json(path);
    }
    let mut package = Map::new();
    package.insert("manifest".into(), read_json(&path.join("manifest.json"))?);
    for kind in ["objects", "views", "flows"] {
        let dir = path.join(kind);
        let mut items = Vec::new();
        if dir.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|source| PackageError::Read {
                    path: dir.display().to_string(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for file in files {
                items.push(read_json(&file)?);
            }
        }
        package.insert(kind.into(), Value::Array(items));
    }
    Ok(Value::Object(package))
}

/// The validated package at `path`.
pub fn load(path: &Path) -> Result<Checked<AppPackage>, PackageError> {
    Ok(parse_value::<AppPackage>(&document(path)?)?)
}

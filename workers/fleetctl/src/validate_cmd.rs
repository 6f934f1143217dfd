//! `fleetctl validate <TypeName> <FILE|->`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use fleet_protocol::registry;

/// Validates the file as `type_name`; see the command's help for the exit codes.
pub fn run(type_name: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let Some(entry) = registry::find(type_name) else {
        let names: Vec<_> = registry::SPECS.iter().map(|e| e.name).collect();
        return Err(crate::exit::usage!(
            "unknown type {type_name:?}; known types: {}",
            names.join(", ")
        ));
    };
    let text = read_input(file)?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    match entry.validate(&document) {
        Ok(normalized) => {
            for warning in &normalized.warnings {
                eprintln!("warning: {warning}");
            }
            say!("{}", serde_json::to_string_pretty(&normalized.json)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            let errors = rejected.errors().count();
            for issue in &rejected.issues {
                match issue.severity {
                    fleet_protocol::IssueSeverity::Error => say!("{issue}"),
                    _ => say!(
                        "{}: {issue}",
                        serde_json::to_value(issue.severity)?
                            .as_str()
                            .unwrap_or("note")
                    ),
                }
            }
            eprintln!(
                "{} is not a valid {}: {errors} error(s)",
                file.display(),
                entry.name
            );
            Ok(crate::exit::failed())
        }
    }
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

//! `fleet-chaos [--scale N] [--only a,b] [--bins DIR]`: runs the reliability scenarios (all, or
//! those named) and prints the scenario × invariant table; exit 1 when an invariant fails.

use std::path::PathBuf;
use std::process::ExitCode;

use fleet_chaos::{Scale, render, run, scenarios};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fleet-chaos [--scale N] [--only {}] [--bins DIR]",
        scenarios::ALL.join(",")
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut scale = Scale::full();
    let mut only: Vec<&'static str> = scenarios::ALL.to_vec();
    let mut bins = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--scale", Some(n)) => match n.parse() {
                Ok(n) => scale = Scale::tenants(n),
                Err(_) => return usage(),
            },
            ("--only", Some(names)) => {
                only = Vec::new();
                for name in names.split(',') {
                    match scenarios::ALL.iter().find(|s| **s == name) {
                        Some(s) => only.push(s),
                        None => return usage(),
                    }
                }
            }
            ("--bins", Some(dir)) => bins = PathBuf::from(dir),
            _ => return usage(),
        }
    }
    let reports = run(&only, &scale, &bins).await;
    println!(
        "\nchaos at {} tenants, {} bad messages (machine: {} cores)\n",
        scale.tenants,
        scale.bad_messages,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{}", render(&reports));
    if reports.iter().all(|r| r.passed() || r.skipped()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

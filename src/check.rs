//! `--check-config`: everything a role reads at start-up (config, flags, files) is loaded and
//! validated, a one-line summary printed, and nothing is bound or connected. Exit 0 when valid,
//! 2 with the error (naming the key or flag) otherwise. Deployment tooling (the Helm chart's
//! tests) runs it on rendered arguments.

use std::process::ExitCode;

use switchyard::config::{self, EndpointPickerConfig};
use switchyard::discovery::Resolver;
use switchyard::scheduling::SchedulerConfig;

use crate::EXIT_CONFIG;
use crate::cli::*;

pub(crate) fn run(command: &Command) -> ExitCode {
    match check(command) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn load(config: &ConfigArgs) -> anyhow::Result<EndpointPickerConfig> {
    Ok(config::load(config.config_file.as_deref(), config.config_text.as_deref())?)
}

fn engines(resolver: &Resolver) -> String {
    let r = &resolver.registry;
    let mut names: Vec<&str> = r.names().collect();
    names.sort_unstable();
    format!("default engine {} (engines: {}; label {})", r.default_engine(), names.join(", "), r.label_key())
}

fn check(command: &Command) -> anyhow::Result<String> {
    match command {
        Command::Standalone(a) => {
            let cfg = load(&a.config)?;
            let resolver = switchyard::app::resolver(&cfg, &a.metric_flags.to_flags())?;
            SchedulerConfig::build(&cfg, a.metrics_staleness_threshold)?;
            a.scheduling.settings(&a.inference_objectives)?;
            let pool = a.discovery.pool()?.check(&resolver)?;
            check_serving(&a.serve)?;
            Ok(format!("standalone: config ok, {}; pool: {pool}", engines(&resolver)))
        }
        Command::Aggregator(a) => {
            let cfg = load(&a.config)?;
            let resolver = switchyard::app::resolver(&cfg, &a.metric_flags.to_flags())?;
            let pool = a.discovery.pool()?.check(&resolver)?;
            let etcd = match a.etcd.settings()? {
                Some(s) => format!("etcd election {:?} on {}", s.election, s.endpoints.join(",")),
                None => "leading alone (no etcd)".into(),
            };
            Ok(format!("aggregator: config ok, {}; pool: {pool}; {etcd}", engines(&resolver)))
        }
        Command::Picker(a) => {
            let cfg = load(&a.config)?;
            SchedulerConfig::build(&cfg, a.metrics_staleness_threshold)?;
            a.scheduling.settings(&a.inference_objectives)?;
            let leader = crate::leader_source(&a.etcd, &a.aggregators)?;
            check_serving(&a.serve)?;
            Ok(format!("picker: config ok; leader from {}", describe(&leader)))
        }
        Command::Scraper(a) => {
            let cfg = load(&a.config)?;
            let resolver = switchyard::app::resolver(&cfg, &a.metric_flags.to_flags())?;
            let leader = crate::leader_source(&a.etcd, &a.aggregators)?;
            Ok(format!("scraper: config ok, {}; leader from {}", engines(&resolver), describe(&leader)))
        }
        _ => Err(config::ConfigError::invalid(
            "--check-config",
            "applies to the roles: standalone, aggregator, picker, scraper",
        )
        .into()),
    }
}

fn describe(leader: &switchyard::leader::LeaderSource) -> String {
    match leader {
        switchyard::leader::LeaderSource::Addresses(a) => format!("addresses {}", a.join(",")),
        switchyard::leader::LeaderSource::Etcd(s) => format!("etcd election {:?}", s.election),
    }
}

/// A certificate directory given must hold a usable certificate.
fn check_serving(serve: &ServeArgs) -> anyhow::Result<()> {
    if let (true, Some(dir)) = (serve.secure_serving, &serve.cert_path) {
        switchyard::picker::tls::load_dir(dir)
            .map_err(|e| config::ConfigError::invalid("--cert-path", format!("{e:#}")))?;
    }
    Ok(())
}

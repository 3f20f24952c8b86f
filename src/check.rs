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
            a.control_tls.refuse()?;
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
            let tls = control_tls(&a.control_tls, true)?;
            Ok(format!("aggregator: config ok, {}; pool: {pool}; {etcd}; {tls}", engines(&resolver)))
        }
        Command::Picker(a) => {
            let cfg = load(&a.config)?;
            SchedulerConfig::build(&cfg, a.metrics_staleness_threshold)?;
            a.scheduling.settings(&a.inference_objectives)?;
            let leader = crate::leader_source(&a.etcd, &a.aggregators)?;
            check_serving(&a.serve)?;
            let tls = control_tls(&a.control_tls, false)?;
            Ok(format!("picker: config ok; leader from {}; {tls}", describe(&leader)))
        }
        Command::Scraper(a) => {
            let cfg = load(&a.config)?;
            let resolver = switchyard::app::resolver(&cfg, &a.metric_flags.to_flags())?;
            let leader = crate::leader_source(&a.etcd, &a.aggregators)?;
            let tls = control_tls(&a.control_tls, false)?;
            Ok(format!("scraper: config ok, {}; leader from {}; {tls}", engines(&resolver), describe(&leader)))
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

/// The control-plane TLS flags must be consistent and their files usable, as the server (an
/// aggregator) or a client (picker, scraper) reads them.
fn control_tls(args: &ControlTlsArgs, server: bool) -> anyhow::Result<&'static str> {
    use switchyard::control_tls::{ClientTls, ServerTls};
    let settings = args.settings();
    let on = if server {
        ServerTls::load(&settings).map_err(config::ConfigError::from)?.is_some()
    } else {
        ClientTls::load(&settings).map_err(config::ConfigError::from)?.is_some()
    };
    Ok(match (on, settings.require) {
        (false, _) => "control plane plaintext",
        (true, false) => "control plane TLS",
        (true, true) => "control plane mutual TLS required",
    })
}

/// A certificate directory given must hold a usable certificate.
fn check_serving(serve: &ServeArgs) -> anyhow::Result<()> {
    if let (true, Some(dir)) = (serve.secure_serving, &serve.cert_path) {
        switchyard::picker::tls::load_dir(dir)
            .map_err(|e| config::ConfigError::invalid("--cert-path", format!("{e:#}")))?;
    }
    Ok(())
}

//! `switchyard bench picker-memory`: a picker's resident memory with E endpoints and a prefix
//! index filled to capacity (each endpoint's, or its share of the index's cap when smaller), then
//! over time while it keeps learning and answering ext-proc requests (the index stays full: every
//! new block evicts an old one).
//!
//! The index is filled the way peers' routing fills it (`Picker::accept` of snapshots carrying
//! routed blocks), with distinct hashes per endpoint: the reverse map then holds one owner list
//! per entry, the most memory an entry can take. What it does not measure: an index shared by
//! many endpoints' identical prompts (smaller), or the ext-proc buffers of many slow streams
//! (bounded separately, docs/limits.md).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rand::{Rng as _, SeedableRng as _};

use crate::config::EndpointPickerConfig;
use crate::model::{MetricsState, RoutedBlocks, Snapshot};
use crate::picker::{ExtProcService, Picker, PickerMetrics, PickerSettings};
use crate::scheduling::{Scheduler, SchedulerConfig};

#[derive(Args, Clone)]
pub struct PickerMemoryArgs {
    #[arg(long, default_value_t = 10_000)]
    pub endpoints: usize,
    /// Prefix-index capacity per endpoint, in blocks: the KV-cache block count each endpoint
    /// reports (`autoTune`, the default) is set to this.
    #[arg(long, default_value_t = 1_000)]
    pub capacity: u64,
    /// Minutes to keep running once the index is full.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 30)]
    pub sample_seconds: u64,
    /// Concurrent ext-proc streams (1 KiB chat requests) while it runs.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Cap on the whole prefix index (`maxIndexEntries`); the config's default when not given.
    #[arg(long)]
    pub max_index_entries: Option<usize>,
}

/// Resident memory of this process in KiB (`VmRSS`), 0 when unreadable.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The next snapshot: same endpoints, the next seq, `routed` blocks.
fn next(s: &Snapshot, routed: Vec<RoutedBlocks>) -> Arc<Snapshot> {
    Arc::new(Snapshot { seq: s.seq + 1, routed_blocks: routed, ..s.clone() })
}

pub async fn picker_memory(args: PickerMemoryArgs) -> anyhow::Result<()> {
    let start = rss_kib();
    let mut config = SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2))?;
    if let Some(cap) = args.max_index_entries {
        config.prefix.max_index_entries = cap.max(1);
    }
    let cap = config.prefix.max_index_entries;
    let scheduler = Scheduler::new(config);
    let picker = Arc::new(Picker::new(scheduler, PickerSettings::default(), PickerMetrics::detached()));
    let mut snapshot = crate::tools::loadgen::synthetic_snapshot(args.endpoints);
    for e in &mut snapshot.endpoints {
        if let MetricsState::Known { sample, .. } = &mut e.metrics {
            Arc::make_mut(sample).metrics.cache_num_blocks = Some(args.capacity);
        }
    }
    let mut snapshot = Arc::new(snapshot);
    picker.accept(snapshot.clone());
    crate::app::follow_snapshots(picker.clone(), Arc::new(crate::health::Readiness::default()));
    let with_snapshot = rss_kib();
    // The cap's share per endpoint (at least one entry), as the index computes it.
    let share = (cap / args.endpoints.max(1)).max(1) as u64;
    let full_entries = args.endpoints as u64 * args.capacity.min(share);
    println!(
        "picker memory: {} endpoints, prefix capacity {} blocks each, index cap {cap} ({share} each): \
         {full_entries} entries when full",
        args.endpoints, args.capacity,
    );
    println!("rss at start {:.1} MiB, with the snapshot {:.1} MiB", mib(start), mib(with_snapshot));

    // Fill every endpoint's LRU with distinct hashes, 64 endpoints per snapshot.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let ids: Vec<_> = snapshot.endpoints.iter().map(|e| e.endpoint.id.clone()).collect();
    let filling = tokio::time::Instant::now();
    for chunk in ids.chunks(64) {
        let routed = chunk
            .iter()
            .map(|id| RoutedBlocks { endpoint: id.clone(), hashes: (0..args.capacity).map(|_| rng.random()).collect() })
            .collect();
        snapshot = next(&snapshot, routed);
        picker.accept(snapshot.clone());
    }
    let full = rss_kib();
    let entries = picker.prefix.len();
    println!(
        "index full in {:.1} s ({} sweeps): {entries} entries, rss {:.1} MiB: {:.0} bytes per entry",
        filling.elapsed().as_secs_f64(),
        picker.prefix.sweeps(),
        mib(full),
        (full.saturating_sub(with_snapshot) * 1024) as f64 / entries.max(1) as f64
    );

    // Keep it full under churn and ext-proc load; sample RSS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer::new(
            ExtProcService { picker: picker.clone() },
        );
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    let load = crate::tools::loadgen::BackgroundLoad::start(addr, args.streams);
    println!("{:>8} {:>12} {:>10}", "minute", "entries", "rss MiB");
    let began = tokio::time::Instant::now();
    let (mut samples, mut last_sample) = (vec![(0.0, picker.prefix.len(), full)], began);
    while began.elapsed() < Duration::from_secs(args.minutes * 60) {
        // ~100,000 new blocks a second: 400 endpoints of 256 (the prefix scorer's cap).
        let routed = (0..400)
            .map(|_| RoutedBlocks {
                endpoint: ids[rng.random_range(0..ids.len())].clone(),
                hashes: (0..256).map(|_| rng.random()).collect(),
            })
            .collect();
        snapshot = next(&snapshot, routed);
        picker.accept(snapshot.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_sample.elapsed() >= Duration::from_secs(args.sample_seconds) {
            last_sample = tokio::time::Instant::now();
            let sample = (began.elapsed().as_secs_f64() / 60.0, picker.prefix.len(), rss_kib());
            println!("{:>8.1} {:>12} {:>10.1}", sample.0, sample.1, mib(sample.2));
            samples.push(sample);
        }
    }
    let (ok, failed) = load.stop().await;
    server.abort();
    let rss: Vec<u64> = samples.iter().map(|s| s.2).collect();
    let (first, last) = (rss.first().copied().unwrap_or(0), rss.last().copied().unwrap_or(0));
    let (lo, hi) = (rss.iter().copied().min().unwrap_or(0), rss.iter().copied().max().unwrap_or(0));
    println!(
        "over {} min: rss {:.1} -> {:.1} MiB (min {:.1}, max {:.1}, change {:+.1} %); picks ok {ok} failed {failed}; \
         {} sweeps in all",
        args.minutes,
        mib(first),
        mib(last),
        mib(lo),
        mib(hi),
        (last as f64 - first as f64) * 100.0 / first.max(1) as f64,
        picker.prefix.sweeps()
    );
    Ok(())
}

//! A test-only adversary: the real worker, except that it reports a forged
//! stdout for every unit, or (`--corrupt-chunks`) serves peers corrupt
//! chunks. It exists to prove the quorum catches liars and downloads catch
//! bad peers; it is never shipped (the shipped `cobble-worker` sets no
//! hooks).

use clap::Parser;
use cobble_worker::attach::Volunteer;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    coordinator: String,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "mallory")]
    user: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_listen: std::net::SocketAddr,
    /// Serve peers chunks with one bit flipped, instead of forging results.
    #[arg(long)]
    corrupt_chunks: bool,
    /// Never ask for work; only serve peers what is in the cache.
    #[arg(long)]
    serve_only: bool,
    /// Preference overrides, as for cobble-worker.
    #[arg(long = "pref")]
    prefs: Vec<String>,
    /// Report this many units honestly before forging: a host that turns
    /// bad after earning trust.
    #[arg(long, default_value_t = 0)]
    honest_for: u64,
    /// Units computed at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// As for cobble-worker: names in public.
    #[arg(long)]
    public_name: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cobble_worker::init_logging();
    let args = Args::parse();
    // The cheater computes whenever it can: the machine's load is not its concern.
    let prefs = cobble_worker::prefs::Prefs::parse(
        "suspend_cpu_usage = 0\nidle_time_to_run = 0\n",
        "cheater",
        &args.prefs,
    )?;
    let monitor = cobble_worker::activity::Monitor::start(
        prefs.clone(),
        Box::new(cobble_worker::activity::SystemLoad::new()),
        PathBuf::from("/sys/class/power_supply"),
    );
    let config = cobble_worker::RunConfig {
        coordinator: args.coordinator,
        data_dir: args.data_dir,
        volunteer: Volunteer {
            user: args.user,
            team: Some("liars".into()),
            account_key: None,
            project_key: None,
            code_key: None,
            invite_code: None,
            public_name: args.public_name,
        },
        slots: args.slots,
        prefs,
        peer_listen: Some(args.peer_listen),
        // Pinned on first attach, as an honest worker does.
        tls_fingerprint: None,
        insecure_plaintext: false,
    };
    let mut hooks = if args.corrupt_chunks {
        // An honest computer but a lying peer: every chunk it serves has
        // one bit flipped.
        cobble_worker::Hooks {
            stdout_filter: None,
            served_chunk_filter: Some(Arc::new(|chunk: &mut Vec<u8>| {
                if let Some(byte) = chunk.first_mut() {
                    *byte ^= 1;
                }
            })),
            serve_only: false,
        }
    } else {
        forging_hooks(args.honest_for)
    };
    hooks.serve_only = args.serve_only;
    cobble_worker::run(config, monitor, hooks, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await?;
    Ok(())
}

/// Reports a forged stdout for every unit after the first `honest_for`.
fn forging_hooks(honest_for: u64) -> cobble_worker::Hooks {
    let seen = std::sync::atomic::AtomicU64::new(0);
    cobble_worker::Hooks {
        served_chunk_filter: None,
        serve_only: false,
        stdout_filter: Some(Arc::new(move |stdout: &mut Vec<u8>| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < honest_for {
                return;
            }
            eprintln!("cobble-cheater: forging a unit's stdout");
            // Claim one prime fewer than computed: plausible, and wrong.
            let text = String::from_utf8_lossy(stdout).into_owned();
            let forged = match text.trim_end().rsplit_once(": ") {
                Some((head, count)) => match count.parse::<u64>() {
                    Ok(n) => format!("{head}: {}\n", n.saturating_sub(1)),
                    Err(_) => format!("forged {text}"),
                },
                None => format!("forged {text}"),
            };
            *stdout = forged.into_bytes();
        })),
    }
}

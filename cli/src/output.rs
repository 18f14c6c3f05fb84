//! Human and `--json` renderings of the CLI's answers.

use cobble_proto::v1 as pb;
use serde_json::json;
use std::path::Path;

pub fn print_status(status: &pb::JobStatus, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status_json(status))?);
        return Ok(());
    }
    println!(
        "job {} ({}): {}, {:.1}% done",
        status.job_id,
        status.name,
        status.state,
        status.progress * 100.0
    );
    println!(
        "  units:   {} total, {} done, {} pending, {} errored",
        status.units_total, status.units_done, status.units_pending, status.units_errored
    );
    println!(
        "  results: {} valid, {} invalid, {} in progress, {} timed out, {} client errors",
        status.results_valid,
        status.results_invalid,
        status.results_in_progress,
        status.results_timed_out,
        status.results_client_error
    );
    if !status.last_unit_error.is_empty() {
        println!("  last error: {}", status.last_unit_error);
    }
    if status.units_unreplicated > 0 {
        println!(
            "  {} done units accepted from one trusted host (adaptive replication)",
            status.units_unreplicated
        );
    }
    if status.units_waiting_network > 0 {
        println!(
            "  {} units wait for a host on another network: a replica is held on the network of every host that asked",
            status.units_waiting_network
        );
    }
    if status.known_answer_passed + status.known_answer_failed > 0 {
        println!(
            "  known-answer checks: {} passed, {} failed (each failure a host caught)",
            status.known_answer_passed, status.known_answer_failed
        );
    }
    println!("  credit granted: {:.3}", status.credit_granted);
    if status.credit_pending > 0.0 {
        println!(
            "  credit pending (units accepted from one host, paid after its next check): {:.3}",
            status.credit_pending
        );
    }
    if status.credit_revoked > 0.0 {
        println!(
            "  credit taken back from results later found invalid: {:.3}",
            status.credit_revoked
        );
    }
    Ok(())
}

fn status_json(status: &pb::JobStatus) -> serde_json::Value {
    json!({
        "job_id": status.job_id,
        "name": status.name,
        "state": status.state,
        "units": {
            "total": status.units_total,
            "done": status.units_done,
            "pending": status.units_pending,
            "errored": status.units_errored,
            "unreplicated": status.units_unreplicated,
            "waiting_network": status.units_waiting_network,
        },
        "results": {
            "valid": status.results_valid,
            "invalid": status.results_invalid,
            "in_progress": status.results_in_progress,
            "timed_out": status.results_timed_out,
            "client_error": status.results_client_error,
        },
        "known_answer_checks": {
            "passed": status.known_answer_passed,
            "failed": status.known_answer_failed,
        },
        "last_unit_error": (!status.last_unit_error.is_empty()).then_some(&status.last_unit_error),
        "credit_granted": status.credit_granted,
        "credit_revoked": status.credit_revoked,
        "credit_pending": status.credit_pending,
        "progress": status.progress,
        "created_ms": status.created_ms,
        "finished_ms": status.finished_ms,
    })
}

pub fn print_results(results: &pb::JobResults, out: &Path, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let units: Vec<_> = results
            .units
            .iter()
            .map(|unit| {
                json!({
                    "index": unit.index,
                    "state": unit.state,
                    "args": unit.args,
                    "dir": (unit.state == "done").then(|| unit_dir(out, unit)),
                    "reduce": unit.reduce,
                    "files": unit.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
                    "error": (!unit.error.is_empty()).then_some(&unit.error),
                    // Several hosts agreed, or one trusted host's word.
                    "replicated": (unit.state == "done").then_some(unit.replicated),
                })
            })
            .collect();
        let value = json!({
            "status": results.status.as_ref().map(status_json),
            "units": units,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let done = results.units.iter().filter(|u| u.state == "done").count();
    println!(
        "{done} of {} units have validated results in {}",
        results.units.len(),
        out.display()
    );
    for unit in results.units.iter().filter(|u| u.state == "errored") {
        println!("  unit {} errored: {}", unit.index, unit.error);
    }
    if let Some(reduce) = results.units.iter().find(|u| u.reduce && u.state == "done") {
        println!(
            "  the job's reduced result (its reduce unit's output): {}",
            unit_dir(out, reduce).display()
        );
    }
    Ok(())
}

/// Where `cobble results` puts a unit's outputs.
pub fn unit_dir(out: &Path, unit: &pb::UnitResult) -> std::path::PathBuf {
    if unit.reduce {
        out.join("reduce")
    } else {
        out.join(unit.index.to_string())
    }
}

pub fn print_leaderboard(board: &pb::Leaderboard, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let entries: Vec<_> = board
            .entries
            .iter()
            .map(|e| {
                json!({
                    "rank": e.rank,
                    "id": e.id,
                    "name": e.name,
                    "detail": e.detail,
                    "total_credit": e.total_credit,
                    "recent_average_credit": e.recent_average_credit,
                    "valid_results": e.valid_results,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "kind": board.kind, "entries": entries }))?
        );
        return Ok(());
    }
    let detail = match board.kind.as_str() {
        "hosts" => "owner",
        "users" => "team",
        _ => "",
    };
    println!(
        "{:>4}  {:<24} {:<16} {:>12} {:>10} {:>8}",
        "rank", board.kind, detail, "credit", "RAC", "valid"
    );
    for e in &board.entries {
        println!(
            "{:>4}  {:<24} {:<16} {:>12.3} {:>10.3} {:>8}",
            e.rank, e.name, e.detail, e.total_credit, e.recent_average_credit, e.valid_results
        );
    }
    Ok(())
}

pub fn print_transfers(stats: &pb::TransferStats, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let hosts: Vec<_> = stats
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "host_id": h.host_id,
                    "host": h.host_name,
                    "account": h.account,
                    "from_coordinator": h.from_coordinator,
                    "from_peers": h.from_peers,
                    "served_to_peers": h.served_to_peers,
                })
            })
            .collect();
        let summary = json!({
            "from_coordinator": stats.from_coordinator,
            "from_peers": stats.from_peers,
            "served_to_peers": stats.served_to_peers,
            "hosts": hosts,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let delivered = stats.from_coordinator + stats.from_peers;
    let share = if delivered == 0 {
        0.0
    } else {
        stats.from_coordinator as f64 / delivered as f64 * 100.0
    };
    println!(
        "inputs delivered: {} bytes, {} from the coordinator ({share:.1}%), {} from peers",
        delivered, stats.from_coordinator, stats.from_peers
    );
    println!(
        "{:>6}  {:<24} {:<16} {:>14} {:>14} {:>14}",
        "host", "name", "owner", "coordinator", "peers", "served"
    );
    for h in &stats.hosts {
        println!(
            "{:>6}  {:<24} {:<16} {:>14} {:>14} {:>14}",
            h.host_id, h.host_name, h.account, h.from_coordinator, h.from_peers, h.served_to_peers
        );
    }
    Ok(())
}

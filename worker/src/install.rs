//! `cobble-worker install` and `uninstall`: the worker as a systemd user
//! service of the current user, in one command. The unit file is
//! `deploy/cobble-worker.service` with its `ExecStart` filled in; the binary
//! is copied to `~/.local/bin` so the service does not depend on where it
//! was built or downloaded.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT_TEMPLATE: &str = include_str!("../../deploy/cobble-worker.service");
pub const UNIT_NAME: &str = "cobble-worker.service";

/// Where an installation lives, derived from the user's XDG directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The installed copy of the binary.
    pub binary: PathBuf,
    /// The systemd user unit.
    pub unit: PathBuf,
    /// The default data dir of an installed worker.
    pub data_dir: PathBuf,
}

impl Layout {
    /// From `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME`, as systemd reads them.
    pub fn for_current_user() -> Result<Layout> {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let home = var("HOME").ok_or_else(|| {
            Error::Install(
                "HOME is not set to an absolute path; cannot find where to install".into(),
            )
        })?;
        let config = var("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        let data = var("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
        Ok(Layout {
            binary: home.join(".local/bin/cobble-worker"),
            unit: config.join("systemd/user").join(UNIT_NAME),
            data_dir: data.join("cobble-worker"),
        })
    }
}

/// The unit file for a service that runs `command` (binary and arguments).
pub fn unit_text(command: &[String]) -> String {
    let exec_start: Vec<String> = command.iter().map(|arg| systemd_quote(arg)).collect();
    UNIT_TEMPLATE.replace("@EXEC_START@", &exec_start.join(" "))
}

/// Quotes one word for a systemd command line: `%` and `$` would be
/// expanded by systemd, and spaces or quotes would split the word.
fn systemd_quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    let inner = escaped.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{inner}\"")
}

/// Copies this binary into place, writes the unit and asks systemd to
/// start it. `run_args` are the arguments of `cobble-worker run`. Returns
/// what the user should read (including what to do by hand when systemd
/// could not be reached).
pub fn install(layout: &Layout, run_args: &[String], start: bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let current = std::env::current_exe().map_err(Error::io("finding this program's path"))?;
    create_parent(&layout.binary)?;
    if std::fs::canonicalize(&current).ok() != std::fs::canonicalize(&layout.binary).ok() {
        // Copy beside, then rename: a running service's binary is replaced
        // atomically, never overwritten in place.
        std::fs::read(&current)
            .and_then(|program| {
                cobble_core::durable::replace(
                    &layout.binary,
                    &program,
                    cobble_core::durable::How::EXECUTABLE,
                )
            })
            .map_err(Error::io(format!("installing {}", layout.binary.display())))?;
    }
    notes.push(format!("installed {}", layout.binary.display()));
    let mut command = vec![layout.binary.display().to_string(), "run".to_string()];
    command.extend(run_args.iter().cloned());
    create_parent(&layout.unit)?;
    cobble_core::durable::replace(
        &layout.unit,
        unit_text(&command).as_bytes(),
        cobble_core::durable::How::PUBLIC,
    )
    .map_err(Error::io(format!("writing {}", layout.unit.display())))?;
    notes.push(format!("wrote {}", layout.unit.display()));
    if !start {
        return Ok(notes);
    }
    match systemctl(&["daemon-reload"]).and_then(|()| systemctl(&["enable", "--now", UNIT_NAME])) {
        Ok(()) => {
            notes.push("started; it computes only while this machine is idle".into());
            notes.push(
                "to keep it running while you are logged out: loginctl enable-linger \"$USER\""
                    .into(),
            );
        }
        Err(message) => {
            notes.push(format!("could not start it through systemd: {message}"));
            notes.push(format!(
                "start it by hand once a user session is available: systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
            ));
        }
    }
    Ok(notes)
}

/// Stops and disables the service and removes the unit and the installed
/// binary. The data dir (account key, journal, cache) is kept.
pub fn uninstall(layout: &Layout) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if let Err(message) = systemctl(&["disable", "--now", UNIT_NAME]) {
        notes.push(format!("systemd did not stop the service: {message}"));
    }
    for path in [&layout.unit, &layout.binary] {
        match std::fs::remove_file(path) {
            Ok(()) => notes.push(format!("removed {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(Error::Io {
                    context: format!("removing {}", path.display()),
                    source: error,
                });
            }
        }
    }
    systemctl(&["daemon-reload"]).ok();
    notes.push(format!(
        "kept {} (delete it to forget this host's account key and cache)",
        layout.data_dir.display()
    ));
    Ok(notes)
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))
        }
        None => Ok(()),
    }
}

/// Runs `systemctl --user ARGS`; the error says what systemd answered.
fn systemctl(args: &[&str]) -> std::result::Result<(), String> {
    let output = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run systemctl: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_quotes_what_systemd_would_split_or_expand() {
        let check = |word: &str, expected: &str| assert_eq!(systemd_quote(word), expected);
        check("run", "run");
        check("http://127.0.0.1:7710", "http://127.0.0.1:7710");
        check("/home/ada/my data", "\"/home/ada/my data\"");
        check("100%", "100%%");
        check("$HOME", "$$HOME");
        check("say \"hi\"", "\"say \\\"hi\\\"\"");
        check("", "\"\"");
        let unit = unit_text(&[
            "/bin/cobble-worker".into(),
            "run".into(),
            "--team".into(),
            "a b".into(),
        ]);
        assert!(
            unit.contains("ExecStart=/bin/cobble-worker run --team \"a b\"\n"),
            "{unit}"
        );
        assert!(
            unit.contains("CPUSchedulingPolicy=idle") && unit.contains("WantedBy=default.target")
        );
    }
}

//! Attaching to a project: the account and host credentials and the pinned
//! project key, kept in `<data-dir>/attach.toml` (mode 0600).

use crate::error::{Error, Result};
use cobble_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

/// What a worker remembers about its project between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub coordinator: String,
    /// The project's ed25519 public key, hex; pinned on first attach.
    pub project_key: String,
    pub account: String,
    pub account_key: String,
    pub account_id: i64,
    pub host_id: i64,
    pub host_key: String,
    /// SHA-256 of the coordinator's TLS certificate, hex, when no authority
    /// vouches for it (a self-signed project): pinned on first attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// The project's offline code-signing key, hex, if it requires signed
    /// modules: pinned on first attach (or as soon as the project says so)
    /// and never dropped, whatever the coordinator says later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_key: Option<String>,
}

impl Attachment {
    /// The pinned certificate fingerprint, if any.
    pub fn pinned_certificate(&self) -> Result<Option<cobble_client::Fingerprint>> {
        self.tls_fingerprint
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: cobble_tls::Error| Error::CorruptState {
                path: PathBuf::from("attach.toml"),
                message: e.to_string(),
            })
    }
}

/// Who the volunteer says they are, from the command line.
#[derive(Debug, Clone)]
pub struct Volunteer {
    pub user: String,
    pub team: Option<String>,
    /// Key of an existing account, to attach a second machine to it.
    pub account_key: Option<String>,
    /// Expected project key; overrides trust-on-first-use.
    pub project_key: Option<String>,
    /// Expected code-signing key (hex): every module must be signed by it.
    pub code_key: Option<String>,
    /// The project's invitation code, when creating an account needs one.
    pub invite_code: Option<String>,
    /// Consent to show the account's and hosts' names in public.
    pub public_name: bool,
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("attach.toml")
}

pub fn load(data_dir: &Path) -> Result<Option<Attachment>> {
    let path = state_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| Error::CorruptState {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
    }
}

fn save(data_dir: &Path, attachment: &Attachment) -> Result<()> {
    let path = state_path(data_dir);
    let text = toml::to_string(attachment).map_err(|e| Error::CorruptState {
        path: path.clone(),
        message: e.to_string(),
    })?;
    cobble_core::durable::write_private(&path, text.as_bytes())
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// Returns this host's attachment, attaching to the project on first run.
/// Refuses a coordinator whose key differs from the pinned one. `certificate`
/// is the coordinator's TLS certificate to pin, when no authority vouches
/// for it; an attachment made before it had one gets it now.
pub async fn attach(
    channel: &Channel,
    url: &str,
    data_dir: &Path,
    volunteer: &Volunteer,
    certificate: Option<cobble_client::Fingerprint>,
) -> Result<Attachment> {
    let mut client = WorkerServiceClient::new(channel.clone());
    let info = client
        .get_project_info(pb::ProjectInfoRequest {})
        .await?
        .into_inner();
    let offered = hex::encode(&info.signing_key);
    cobble_core::manifest::project_key_from_hex(&offered)?;
    let existing = load(data_dir)?;
    let pinned = volunteer
        .project_key
        .clone()
        .or_else(|| existing.as_ref().map(|a| a.project_key.clone()));
    if let Some(pinned) = pinned
        && pinned.trim() != offered
    {
        return Err(Error::ProjectKeyChanged {
            pinned_in: state_path(data_dir),
            expected: pinned,
            actual: offered,
        });
    }
    let code_key = code_key_to_pin(
        volunteer,
        existing.as_ref(),
        &info.code_signing_key,
        &state_path(data_dir),
    )?;
    if let Some(mut existing) = existing {
        let certificate = certificate.map(|c| c.to_hex());
        let pin_certificate = existing.tls_fingerprint != certificate && certificate.is_some();
        if pin_certificate || existing.code_key != code_key {
            if pin_certificate {
                existing.tls_fingerprint = certificate;
            }
            existing.code_key = code_key;
            save(data_dir, &existing)?;
        }
        return Ok(existing);
    }
    let response = client
        .register_host(pb::RegisterHostRequest {
            account: volunteer.user.clone(),
            account_key: volunteer.account_key.clone().unwrap_or_default(),
            team: volunteer.team.clone().unwrap_or_default(),
            host_name: host_name(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: 0,
            os: std::env::consts::OS.to_string(),
            invite_code: volunteer.invite_code.clone().unwrap_or_default(),
            public_name: volunteer.public_name,
        })
        .await?
        .into_inner();
    let attachment = Attachment {
        coordinator: url.to_string(),
        project_key: offered,
        account: volunteer.user.clone(),
        account_key: if response.account_key.is_empty() {
            volunteer.account_key.clone().unwrap_or_default()
        } else {
            response.account_key
        },
        account_id: response.account_id,
        host_id: response.host_id,
        host_key: response.host_key,
        tls_fingerprint: certificate.map(|c| c.to_hex()),
        code_key,
    };
    save(data_dir, &attachment)?;
    tracing::info!(
        account = %attachment.account,
        host_id = attachment.host_id,
        "attached to project {}",
        info.name
    );
    Ok(attachment)
}

/// The code-signing key this worker enforces from now on: the one the
/// volunteer gave, else the one pinned, else the one the project offers. A
/// project that offers another is refused; one that offers none no longer
/// unpins it (a stolen coordinator would say exactly that).
fn code_key_to_pin(
    volunteer: &Volunteer,
    existing: Option<&Attachment>,
    offered: &[u8],
    pinned_in: &Path,
) -> Result<Option<String>> {
    let offered = (!offered.is_empty()).then(|| hex::encode(offered));
    if let Some(key) = &offered {
        cobble_core::manifest::project_key_from_hex(key)?;
    }
    let pinned = volunteer
        .code_key
        .as_deref()
        .map(|k| k.trim().to_lowercase())
        .or_else(|| existing.and_then(|a| a.code_key.clone()));
    match (pinned, offered) {
        (Some(pinned), Some(offered)) if pinned != offered => Err(Error::CodeKeyChanged {
            pinned_in: pinned_in.to_path_buf(),
            expected: pinned,
            actual: offered,
        }),
        (Some(pinned), None) => {
            tracing::warn!(
                "the coordinator no longer says it requires signed code; this worker still runs only modules signed by {pinned}"
            );
            cobble_core::manifest::project_key_from_hex(&pinned)?;
            Ok(Some(pinned))
        }
        (pinned, offered) => Ok(pinned.or(offered)),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or_else(|| "host".to_string())
}

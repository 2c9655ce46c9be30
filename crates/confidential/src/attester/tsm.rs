//! Hardware evidence through configfs-tsm, the Linux kernel's one interface (6.7 and later)
//! to a confidential guest's attestation: `mkdir` an entry under
//! `/sys/kernel/config/tsm/report`, write the 64 bytes of report data to its `inblob`, read
//! the report from `outblob` (a TD quote under `tdx_guest`, a 1184-byte attestation report
//! under `sev_guest`) and, for SEV-SNP, the host's certificate table from `auxblob`. The
//! entry's `generation` counter is read around the report so that a concurrent writer is
//! detected instead of mixing two requests.
//!
//! Not run on TDX or SEV-SNP hardware by this project (it has none): the tests drive the same
//! code through [`TsmDevice`] implementations that return the public sample evidence the
//! verifiers are tested on. What the evidence needs beyond the device is supplied offline by
//! the operator, as the verifiers expect: the DCAP collateral of the platform (TDX), and the
//! VCEK certificate when the host does not put one in the certificate table (SEV-SNP).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Attester, AttesterError};
use crate::attest::{Evidence, SNP_REPORT_LEN, SnpProduct};

/// Where configfs-tsm report entries are created.
pub const DEFAULT_TSM_ROOT: &str = "/sys/kernel/config/tsm/report";

/// What the kernel's TSM provider returned for one report request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// `tdx_guest`, `sev_guest`, …
    pub provider: String,
    pub outblob: Vec<u8>,
    /// SEV-SNP: the host's certificate table, when it supplies one.
    pub auxblob: Option<Vec<u8>>,
}

/// A source of TSM reports bound to 64 bytes of report data.
pub trait TsmDevice: Send + Sync {
    fn report(&self, report_data: &[u8; 64]) -> Result<TsmReport, AttesterError>;
}

/// The kernel's configfs-tsm directory.
#[derive(Clone, Debug)]
pub struct ConfigFsTsm {
    root: PathBuf,
}

impl ConfigFsTsm {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigFsTsm { root: root.into() }
    }
}

impl Default for ConfigFsTsm {
    fn default() -> Self {
        ConfigFsTsm::new(DEFAULT_TSM_ROOT)
    }
}

/// Tries before giving up on an entry whose generation keeps changing.
const GENERATION_TRIES: usize = 3;

impl TsmDevice for ConfigFsTsm {
    fn report(&self, report_data: &[u8; 64]) -> Result<TsmReport, AttesterError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sortition-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let entry = Entry::create(&self.root.join(name))?;
        for _ in 0..GENERATION_TRIES {
            entry.write("inblob", report_data)?;
            let before = entry.generation()?;
            let outblob = entry.read("outblob")?;
            let auxblob = entry.read_optional("auxblob")?.filter(|a| !a.is_empty());
            if entry.generation()? == before {
                let provider = String::from_utf8_lossy(&entry.read("provider")?)
                    .trim()
                    .to_string();
                return Ok(TsmReport {
                    provider,
                    outblob,
                    auxblob,
                });
            }
        }
        Err(AttesterError::Failed(format!(
            "configfs-tsm entry {} changed while it was read, {GENERATION_TRIES} times \
             (another writer on it)",
            entry.dir.display()
        )))
    }
}

/// A report entry, removed when dropped.
struct Entry {
    dir: PathBuf,
}

impl Entry {
    fn create(dir: &Path) -> Result<Entry, AttesterError> {
        fs::create_dir(dir).map_err(|e| {
            AttesterError::Failed(format!(
                "cannot create {}: {e} (configfs-tsm needs Linux 6.7+ inside a TDX or SEV-SNP \
                 guest, configfs mounted and write access)",
                dir.display()
            ))
        })?;
        Ok(Entry { dir: dir.into() })
    }

    fn path(&self, attr: &str) -> PathBuf {
        self.dir.join(attr)
    }

    fn failed(&self, attr: &str, e: std::io::Error) -> AttesterError {
        AttesterError::Failed(format!("{}: {e}", self.path(attr).display()))
    }

    fn write(&self, attr: &str, bytes: &[u8]) -> Result<(), AttesterError> {
        fs::write(self.path(attr), bytes).map_err(|e| self.failed(attr, e))
    }

    fn read(&self, attr: &str) -> Result<Vec<u8>, AttesterError> {
        fs::read(self.path(attr)).map_err(|e| self.failed(attr, e))
    }

    fn read_optional(&self, attr: &str) -> Result<Option<Vec<u8>>, AttesterError> {
        match fs::read(self.path(attr)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.failed(attr, e)),
        }
    }

    fn generation(&self) -> Result<u64, AttesterError> {
        let raw = self.read("generation")?;
        String::from_utf8_lossy(&raw)
            .trim()
            .parse()
            .map_err(|e| AttesterError::Failed(format!("generation {raw:?}: {e}")))
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // configfs removes the attributes with the directory.
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!(entry = %self.dir.display(), error = %e, "could not remove the configfs-tsm entry");
        }
    }
}

/// The TEE behind the device and what its evidence needs from the operator.
#[derive(Clone, Debug)]
pub enum TsmTee {
    /// Intel TDX: the platform's DCAP collateral, carried in the evidence for offline
    /// verification.
    Tdx {
        collateral: Box<dcap_qvl::QuoteCollateralV3>,
    },
    /// AMD SEV-SNP: the EPYC generation, and the VCEK (DER) for hosts that supply no
    /// certificate table.
    SevSnp {
        product: SnpProduct,
        vcek_der: Option<Vec<u8>>,
    },
}

impl TsmTee {
    fn provider(&self) -> &'static str {
        match self {
            TsmTee::Tdx { .. } => "tdx_guest",
            TsmTee::SevSnp { .. } => "sev_guest",
        }
    }
}

/// Evidence from a [`TsmDevice`]: a TDX quote or an SEV-SNP report bound to the key.
pub struct TsmAttester<D: TsmDevice = ConfigFsTsm> {
    device: D,
    tee: TsmTee,
}

impl<D: TsmDevice> TsmAttester<D> {
    pub fn new(device: D, tee: TsmTee) -> Self {
        TsmAttester { device, tee }
    }
}

impl<D: TsmDevice> Attester for TsmAttester<D> {
    fn evidence(&self, report_data: &[u8; 64], _now_unix: u64) -> Result<Evidence, AttesterError> {
        let r = self.device.report(report_data)?;
        if r.provider != self.tee.provider() {
            return Err(AttesterError::Failed(format!(
                "configfs-tsm provider is {:?}, this node is configured for {}",
                r.provider,
                self.tee.provider()
            )));
        }
        match &self.tee {
            TsmTee::Tdx { collateral } => Ok(Evidence::Tdx {
                quote: r.outblob,
                collateral: (**collateral).clone(),
            }),
            TsmTee::SevSnp { product, vcek_der } => {
                if r.outblob.len() != SNP_REPORT_LEN {
                    return Err(AttesterError::Failed(format!(
                        "SEV-SNP report of {} bytes, expected {SNP_REPORT_LEN}",
                        r.outblob.len()
                    )));
                }
                let from_host = match &r.auxblob {
                    Some(table) => vcek_from_cert_table(table)?,
                    None => None,
                };
                let vcek_der = from_host.or_else(|| vcek_der.clone()).ok_or_else(|| {
                    AttesterError::Failed(
                        "no VCEK: the host supplied no certificate table with one, and none \
                         was configured"
                            .into(),
                    )
                })?;
                Ok(Evidence::SevSnp {
                    report: r.outblob,
                    vcek_der,
                    product: *product,
                })
            }
        }
    }

    fn label(&self) -> &'static str {
        match self.tee {
            TsmTee::Tdx { .. } => "tdx (configfs-tsm)",
            TsmTee::SevSnp { .. } => "sev-snp (configfs-tsm)",
        }
    }

    fn is_insecure(&self) -> bool {
        false
    }
}

/// The VCEK's GUID `63da758d-e664-4564-adc5-f4b93be8accd`, in the byte order of the string
/// (the `sev` crate's) and in the mixed-endian order of the kernel's `guid_t`.
const VCEK_GUIDS: [[u8; 16]; 2] = [
    [
        0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ],
    [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ],
];

/// Bytes of one certificate-table entry: a GUID, then offset and length (u32, little-endian)
/// of the certificate from the start of the table.
const TABLE_ENTRY: usize = 24;

/// The VCEK in an SEV-SNP certificate table (`None` if the table has none). The table comes
/// from the host, so every offset and length is checked; a malformed table is an error.
pub fn vcek_from_cert_table(table: &[u8]) -> Result<Option<Vec<u8>>, AttesterError> {
    let bad = |why: &str| AttesterError::Failed(format!("SEV-SNP certificate table: {why}"));
    for entry in table.chunks(TABLE_ENTRY) {
        let [guid @ .., o0, o1, o2, o3, l0, l1, l2, l3] = entry else {
            return Err(bad("truncated entry"));
        };
        let guid: [u8; 16] = guid.try_into().map_err(|_| bad("truncated entry"))?;
        if guid == [0; 16] {
            return Ok(None);
        }
        if !VCEK_GUIDS.contains(&guid) {
            continue;
        }
        let offset = u32::from_le_bytes([*o0, *o1, *o2, *o3]) as usize;
        let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
        let cert = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("VCEK entry points outside the table"))?;
        return Ok(Some(cert.to_vec()));
    }
    Err(bad("no terminating entry"))
}

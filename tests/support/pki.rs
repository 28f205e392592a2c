//! Certificates made by the `openssl` command line in a temp dir, for TLS tests on both
//! sides (backends, listeners, client certificates).

use std::{path::PathBuf, process::Command};

/// A temp dir of PEM files: CAs (`<name>.pem`, `<name>.key`) and leaf certificates
/// they signed, all EC P-256.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// An empty PKI; `None` (the test skips) without `openssl`, outside CI.
    pub fn new() -> Option<Self> {
        if !super::have_command("openssl") {
            return None;
        }
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Runs `openssl` in the temp dir with `args` (split on whitespace).
    pub fn openssl(&self, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA: `<name>.pem`, `<name>.key`.
    pub fn ca(&self, name: &str) {
        self.openssl(&format!(
            "req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.pem -days 3650 -subj /CN={name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
    }

    /// A leaf certificate `<name>.pem`, `<name>.key` signed by `ca`, with `extensions`
    /// (lines of an openssl extension file).
    pub fn leaf(&self, name: &str, ca: &str, serial: u32, extensions: &str) {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!(
                "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
                 subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n{extensions}\n"
            ),
        )
        .unwrap();
        self.openssl(&format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        self.openssl(&format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -set_serial {serial} \
             -days 825 -extfile {name}.ext -out {name}.pem"
        ));
    }

    /// A server certificate for the names in `san` (`DNS:localhost, IP:127.0.0.1`).
    pub fn server(&self, name: &str, ca: &str, serial: u32, san: &str) {
        let ext = format!("extendedKeyUsage = serverAuth\nsubjectAltName = {san}");
        self.leaf(name, ca, serial, &ext);
    }

    /// A client certificate (for mTLS).
    pub fn client(&self, name: &str, ca: &str, serial: u32) {
        self.leaf(name, ca, serial, "extendedKeyUsage = clientAuth");
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The path of `file`, as a string.
    pub fn file(&self, file: &str) -> String {
        self.path(file).to_str().unwrap().to_owned()
    }

    pub fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    /// Copies `<from>.pem` and `<from>.key` over `<to>.pem` and `<to>.key` (what a
    /// certificate renewal does to the files a server reads).
    pub fn install(&self, from: &str, to: &str) {
        for ext in ["pem", "key"] {
            std::fs::copy(
                self.path(&format!("{from}.{ext}")),
                self.path(&format!("{to}.{ext}")),
            )
            .unwrap();
        }
    }
}

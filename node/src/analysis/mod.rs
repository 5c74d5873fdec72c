//! Analysis: every exchange (request and response paired by id) goes through
//! OWASP CRS run by libmodsecurity 3, in detection-only mode, tuned for APIs.
//!
//! - [`classes`]: attack classes from the CRS rule ranges.
//! - [`modsec`]: libmodsecurity through its C API.
//! - [`pool`]: analysis threads, the bounded queue, counters.

pub mod classes;
pub mod modsec;
pub mod pool;

use std::path::PathBuf;

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub id: u32,
    pub msg: String,
    /// `CRITICAL`, `ERROR`, `WARNING`, `NOTICE`…
    pub severity: String,
    /// What matched, truncated to [`modsec::MAX_DATA`] bytes.
    pub data: String,
}

/// Where the rules come from and how strict they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    /// CRS `rules/` directory (Debian: /usr/share/modsecurity-crs/rules).
    pub crs_rules: PathBuf,
    /// CRS paranoia level, 1 to 4.
    pub paranoia: u8,
    /// Extra rule files, loaded after CRS and the project's own rules.
    pub extra: Vec<PathBuf>,
}

pub const DEFAULT_CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            crs_rules: PathBuf::from(DEFAULT_CRS_RULES),
            paranoia: 1,
            extra: Vec::new(),
        }
    }
}

/// The project's own rules (see the file for why).
const OWN_RULES: &str = include_str!("../../rules/oob-mirror.conf");

impl RulesConfig {
    /// The node's whole configuration as ModSecurity text: base settings
    /// (Debian ships no modsecurity.conf), the CRS setup it needs, the API
    /// tuning, CRS itself and the project's own rules.
    pub fn text(&self) -> Result<String, String> {
        if !(1..=4).contains(&self.paranoia) {
            return Err(format!("paranoia level is 1 to 4, not {}", self.paranoia));
        }
        let crs = self.crs_rules.to_string_lossy();
        if !self
            .crs_rules
            .join("REQUEST-901-INITIALIZATION.conf")
            .is_file()
        {
            return Err(format!(
                "no OWASP CRS rules in {crs} (Debian package modsecurity-crs; `make setup` installs it)"
            ));
        }
        let paranoia = self.paranoia;
        Ok(format!(
            r#"# --- engine: detection only, bodies read (what modsecurity.conf would set)
SecRuleEngine DetectionOnly
SecRequestBodyAccess On
SecRequestBodyLimit 67108864
SecRequestBodyNoFilesLimit 67108864
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html text/xml application/json application/problem+json application/xml
SecResponseBodyLimit 67108864
SecResponseBodyLimitAction ProcessPartial
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\+|/)|text/)xml" \
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/(?:[a-z0-9.+-]+\+)?json" \
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" \
    "id:200002,phase:2,t:none,log,pass,msg:'Failed to parse request body.',logdata:'%{{reqbody_error_msg}}',severity:2"

# --- CRS setup (crs-setup.conf), tuned for APIs
SecDefaultAction "phase:1,log,auditlog,pass"
SecDefaultAction "phase:2,log,auditlog,pass"
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={paranoia}"
SecAction "id:900200,phase:1,nolog,pass,t:none,setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"
SecAction "id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334"

# --- OWASP CRS
Include {crs}/*.conf

# An API behind an ingress is often reached by IP: a numeric Host is normal.
SecRuleRemoveById 920350

# --- oob-mirror's own rules
{own}"#,
            own = OWN_RULES.replace("@CRS_RULES@", &crs),
        ))
    }

    /// Loads the rules into a new engine (each analysis thread has its own).
    pub fn engine(&self) -> Result<modsec::Engine, String> {
        let files: Vec<&std::path::Path> = self.extra.iter().map(PathBuf::as_path).collect();
        modsec::Engine::new(&self.text()?, &files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::{Exchange, ResponsePart};

    fn ids(ex: &Exchange) -> Vec<u32> {
        let engine = RulesConfig::default().engine().unwrap();
        engine.analyse(ex).iter().map(|m| m.id).collect()
    }

    fn get(path: &str) -> Exchange {
        Exchange {
            id: "t".into(),
            source: Some("10.1.2.3:40000".into()),
            destination: Some("10.0.0.1:8080".into()),
            method: "GET".into(),
            authority: Some("api.example.com".into()),
            path: path.into(),
            protocol: Some("HTTP/1.1".into()),
            request_headers: vec![
                (b"host".to_vec(), b"api.example.com".to_vec()),
                (b"user-agent".to_vec(), b"curl/8.0".to_vec()),
                (b"accept".to_vec(), b"*/*".to_vec()),
            ],
            response: Some(ResponsePart {
                status: 200,
                headers: vec![(b"content-type".to_vec(), b"application/json".to_vec())],
                body: b"{\"ok\":true}".to_vec(),
            }),
            ..Exchange::default()
        }
    }

    #[test]
    fn crs_loads_and_detects() {
        let t = std::time::Instant::now();
        let _ = RulesConfig::default().engine().unwrap();
        eprintln!("load: {:?}", t.elapsed());
        assert_eq!(ids(&get("/users?name=o%27brien")), Vec::<u32>::new());
        let passwd = ids(&get("/etc/passwd"));
        assert!(passwd.contains(&100930), "{passwd:?}");
        assert!(passwd.contains(&949110), "{passwd:?}");
        let sqli = ids(&get("/items?id=1%27%20or%20%271%27%3D%271"));
        assert!(sqli.iter().any(|id| id / 1000 == 942), "{sqli:?}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = RulesConfig {
            paranoia: 5,
            ..RulesConfig::default()
        };
        assert!(c.text().unwrap_err().contains("paranoia"));
        c.paranoia = 1;
        c.crs_rules = "/nonexistent".into();
        assert!(c.text().unwrap_err().contains("no OWASP CRS"));
        let c = RulesConfig {
            extra: vec!["/nonexistent.conf".into()],
            ..RulesConfig::default()
        };
        assert!(c.engine().err().unwrap().contains("/nonexistent.conf"));
    }
}

//! libmodsecurity 3 through its C API: one [`Engine`] (ModSecurity instance
//! and loaded rule set) per analysis thread, so no rule or collection state is
//! shared between threads.
//!
//! Matches come back through the text log callback, one line per rule that
//! logged; [`parse_log_line`] reads its `[id "…"] [msg "…"]` fields.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::RuleMatch;
use crate::pairing::Exchange;

#[repr(C)]
struct ModSecurity {
    _private: [u8; 0],
}
#[repr(C)]
struct RulesSet {
    _private: [u8; 0],
}
#[repr(C)]
struct Transaction {
    _private: [u8; 0],
}

type LogCb = extern "C" fn(*mut c_void, *const c_void);

#[link(name = "modsecurity")]
extern "C" {
    fn msc_init() -> *mut ModSecurity;
    fn msc_set_connector_info(ms: *mut ModSecurity, connector: *const c_char);
    fn msc_set_log_cb(ms: *mut ModSecurity, cb: LogCb);
    fn msc_cleanup(ms: *mut ModSecurity);
    fn msc_create_rules_set() -> *mut RulesSet;
    fn msc_rules_add(
        rules: *mut RulesSet,
        plain: *const c_char,
        error: *mut *const c_char,
    ) -> c_int;
    fn msc_rules_add_file(
        rules: *mut RulesSet,
        file: *const c_char,
        error: *mut *const c_char,
    ) -> c_int;
    fn msc_rules_cleanup(rules: *mut RulesSet) -> c_int;
    fn msc_new_transaction(
        ms: *mut ModSecurity,
        rules: *mut RulesSet,
        log_data: *mut c_void,
    ) -> *mut Transaction;
    fn msc_process_connection(
        t: *mut Transaction,
        client: *const c_char,
        client_port: c_int,
        server: *const c_char,
        server_port: c_int,
    ) -> c_int;
    fn msc_process_uri(
        t: *mut Transaction,
        uri: *const c_char,
        method: *const c_char,
        http_version: *const c_char,
    ) -> c_int;
    fn msc_add_n_request_header(
        t: *mut Transaction,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> c_int;
    fn msc_process_request_headers(t: *mut Transaction) -> c_int;
    fn msc_append_request_body(t: *mut Transaction, body: *const u8, size: usize) -> c_int;
    fn msc_process_request_body(t: *mut Transaction) -> c_int;
    fn msc_add_n_response_header(
        t: *mut Transaction,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> c_int;
    fn msc_process_response_headers(
        t: *mut Transaction,
        code: c_int,
        protocol: *const c_char,
    ) -> c_int;
    fn msc_append_response_body(t: *mut Transaction, body: *const u8, size: usize) -> c_int;
    fn msc_process_response_body(t: *mut Transaction) -> c_int;
    fn msc_process_logging(t: *mut Transaction) -> c_int;
    fn msc_transaction_cleanup(t: *mut Transaction);
}

/// Collects the log lines of one transaction (the callback's data pointer).
extern "C" fn collect(data: *mut c_void, line: *const c_void) {
    if data.is_null() || line.is_null() {
        return;
    }
    // SAFETY: `data` is the `Vec<String>` that `Engine::analyse` passed to
    // msc_new_transaction and keeps alive until the transaction is cleaned
    // up; with the text log property `line` is a NUL-terminated string.
    let (lines, text) = unsafe {
        (
            &mut *(data as *mut Vec<String>),
            CStr::from_ptr(line as *const c_char),
        )
    };
    lines.push(text.to_string_lossy().into_owned());
}

/// Rule loading is not thread-safe in libmodsecurity 3.0 (two threads loading
/// at once corrupt the heap, seen here): engines are made and freed one at a
/// time.
static LOADING: Mutex<()> = Mutex::new(());

/// A ModSecurity instance with its rules loaded. Not `Send`: each analysis
/// thread builds its own.
pub struct Engine {
    ms: *mut ModSecurity,
    rules: *mut RulesSet,
}

impl Engine {
    /// Loads `config` (rules as text), then each file of `files` in order.
    pub fn new(config: &str, files: &[&Path]) -> Result<Engine, String> {
        let loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: plain constructors; null is checked in `load`.
        let engine = unsafe {
            Engine {
                ms: msc_init(),
                rules: msc_create_rules_set(),
            }
        };
        let loaded = engine.load(config, files);
        // Released before `engine` is dropped on error: Drop takes it too.
        drop(loading);
        loaded.map(|()| engine)
    }

    fn load(&self, config: &str, files: &[&Path]) -> Result<(), String> {
        let (ms, rules) = (self.ms, self.rules);
        if ms.is_null() || rules.is_null() {
            return Err("libmodsecurity: cannot create an instance".into());
        }
        let connector = c_string("oob-mirror-node")?;
        // SAFETY: valid instance and NUL-terminated string, copied by the callee.
        unsafe {
            msc_set_connector_info(ms, connector.as_ptr());
            msc_set_log_cb(ms, collect);
        }
        let text = c_string(config)?;
        let mut error: *const c_char = std::ptr::null();
        // SAFETY: valid rule set; `error` is set to a message we only read.
        let rc = unsafe { msc_rules_add(rules, text.as_ptr(), &mut error) };
        if rc < 0 {
            return Err(format!("rules: {}", error_text(error)));
        }
        for file in files {
            let path = c_string(&file.to_string_lossy())?;
            let mut error: *const c_char = std::ptr::null();
            // SAFETY: as above.
            let rc = unsafe { msc_rules_add_file(rules, path.as_ptr(), &mut error) };
            if rc < 0 {
                return Err(format!("{}: {}", file.display(), error_text(error)));
            }
        }
        Ok(())
    }

    /// Runs every phase on the exchange (the response phases only when it
    /// has a response) and returns the rules that matched, in firing order.
    pub fn analyse(&self, ex: &Exchange) -> Vec<RuleMatch> {
        let mut lines: Vec<String> = Vec::new();
        // SAFETY: `lines` outlives the transaction (cleaned up below); every
        // buffer passed is valid for the length given and copied by the
        // callee before it returns.
        unsafe {
            let t = msc_new_transaction(self.ms, self.rules, &mut lines as *mut _ as *mut c_void);
            if t.is_null() {
                return Vec::new();
            }
            let (client, client_port) = split_host_port(ex.source.as_deref());
            let (server, server_port) = split_host_port(ex.destination.as_deref());
            let client = c_string_lossy(client);
            let server = c_string_lossy(server);
            msc_process_connection(
                t,
                client.as_ptr(),
                client_port,
                server.as_ptr(),
                server_port,
            );
            let uri = c_string_lossy(&ex.path);
            let method = c_string_lossy(&ex.method);
            let version = c_string_lossy(ex.http_version());
            msc_process_uri(t, uri.as_ptr(), method.as_ptr(), version.as_ptr());
            let mut has_host = false;
            for (name, value) in &ex.request_headers {
                if name.starts_with(b":") {
                    continue;
                }
                has_host |= name.eq_ignore_ascii_case(b"host");
                msc_add_n_request_header(t, name.as_ptr(), name.len(), value.as_ptr(), value.len());
            }
            // HTTP/2 carries the host as :authority; a server sees it as Host.
            if let (false, Some(authority)) = (has_host, &ex.authority) {
                msc_add_n_request_header(
                    t,
                    b"host".as_ptr(),
                    4,
                    authority.as_ptr(),
                    authority.len(),
                );
            }
            msc_process_request_headers(t);
            if !ex.request_body.is_empty() {
                msc_append_request_body(t, ex.request_body.as_ptr(), ex.request_body.len());
            }
            msc_process_request_body(t);
            if let Some(resp) = &ex.response {
                for (name, value) in &resp.headers {
                    if name.starts_with(b":") {
                        continue;
                    }
                    msc_add_n_response_header(
                        t,
                        name.as_ptr(),
                        name.len(),
                        value.as_ptr(),
                        value.len(),
                    );
                }
                let protocol = c_string_lossy(&format!("HTTP {}", ex.http_version()));
                msc_process_response_headers(t, c_int::from(resp.status), protocol.as_ptr());
                if !resp.body.is_empty() {
                    msc_append_response_body(t, resp.body.as_ptr(), resp.body.len());
                }
                msc_process_response_body(t);
            }
            msc_process_logging(t);
            msc_transaction_cleanup(t);
        }
        let mut matches: Vec<RuleMatch> = Vec::new();
        for m in lines.iter().filter_map(|l| parse_log_line(l)) {
            // A rule that matched several variables logs once each: report it once.
            if !matches.iter().any(|seen| seen.id == m.id) {
                matches.push(m);
            }
        }
        matches
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: created in `new`, freed once here; null-safe checks.
        unsafe {
            if !self.rules.is_null() {
                msc_rules_cleanup(self.rules);
            }
            if !self.ms.is_null() {
                msc_cleanup(self.ms);
            }
        }
    }
}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL byte in {s:?}"))
}

/// For values from the wire: a NUL byte (never valid there) ends the string.
fn c_string_lossy(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(s.get(..end).unwrap_or_default()).unwrap_or_default()
}

fn error_text(error: *const c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: libmodsecurity sets it to a NUL-terminated message.
    unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .trim()
        .to_owned()
}

/// `"ip:port"` or `"[ip]:port"` → (ip, port); unknown parts are empty / 0.
pub fn split_host_port(addr: Option<&str>) -> (&str, c_int) {
    let Some(addr) = addr else { return ("", 0) };
    match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            (host, port.parse().unwrap_or(0))
        }
        _ => (addr, 0),
    }
}

/// Longest matched-data text kept per rule.
pub const MAX_DATA: usize = 256;

/// Reads one ModSecurity log line: `… [id "942100"] [msg "…"] [data "…"]
/// [severity "2"] …`. Lines without an id are not matches.
pub fn parse_log_line(line: &str) -> Option<RuleMatch> {
    let id = field(line, "id")?.parse().ok()?;
    let severity = match field(line, "severity").and_then(|s| s.parse::<u8>().ok()) {
        Some(n) => severity_name(n).to_owned(),
        None => field(line, "severity").unwrap_or_default().to_owned(),
    };
    Some(RuleMatch {
        id,
        msg: field(line, "msg").unwrap_or_default().to_owned(),
        severity,
        data: truncate(field(line, "data").unwrap_or_default(), MAX_DATA),
    })
}

/// The value of `[name "value"]`. Values may hold quotes, so a value ends at
/// the `"]` that is followed by ` [` or the end of the line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("[{name} \"");
    let start = line.find(&open)? + open.len();
    let rest = line.get(start..)?;
    let mut from = 0;
    loop {
        let end = from + rest.get(from..)?.find("\"]")?;
        let after = rest.get(end + 2..).unwrap_or_default();
        if after.is_empty() || after.starts_with(" [") {
            return rest.get(..end);
        }
        from = end + 2;
    }
}

fn severity_name(n: u8) -> &'static str {
    match n {
        0 => "EMERGENCY",
        1 => "ALERT",
        2 => "CRITICAL",
        3 => "ERROR",
        4 => "WARNING",
        5 => "NOTICE",
        6 => "INFO",
        _ => "DEBUG",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_fields() {
        let line = r#"ModSecurity: Warning. Matched "Operator `Rx' with parameter `x' against variable `ARGS:q' (Value: `1" or "1"="1' ) [file "/r.conf"] [line "5"] [id "942100"] [rev ""] [msg "SQL Injection Attack Detected via libinjection"] [data "Matched Data: s&sos found within ARGS:q: 1" or "1"="1"] [severity "2"] [ver "OWASP_CRS/3.3.4"] [hostname "h"] [uri "/"] [unique_id "1"] [ref "v"]"#;
        let m = parse_log_line(line).unwrap();
        assert_eq!(m.id, 942100);
        assert_eq!(m.msg, "SQL Injection Attack Detected via libinjection");
        assert_eq!(m.severity, "CRITICAL");
        assert_eq!(
            m.data,
            r#"Matched Data: s&sos found within ARGS:q: 1" or "1"="1"#
        );
        assert!(parse_log_line("ModSecurity: nothing").is_none());
    }

    #[test]
    fn data_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(200);
        let t = truncate(&long, MAX_DATA);
        assert!(t.len() <= MAX_DATA + "…".len());
        assert!(t.ends_with('…'));
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port(Some("10.0.0.1:5555")), ("10.0.0.1", 5555));
        assert_eq!(split_host_port(Some("[::1]:80")), ("::1", 80));
        assert_eq!(split_host_port(Some("pipe")), ("pipe", 0));
        assert_eq!(split_host_port(None), ("", 0));
    }
}

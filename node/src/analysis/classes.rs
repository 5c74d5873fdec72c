//! Attack classes, from the CRS rule ranges (a rule's id / 1000 names its file:
//! `REQUEST-942-APPLICATION-ATTACK-SQLI.conf` holds 942xxx).
//!
//! The anomaly evaluations (949, 959, 980: "the score passed the threshold") and CRS's own
//! set-up rules (900–912 but 911 and 913) say nothing of their own and have no class. The
//! node's own rules are 100000–199999 for a rule that stands beside a CRS family (100930
//! reads the path as 930120 reads arguments: LFI; the last three digits name the family) and
//! 200000–299999 for the engine's (a body that does not parse); the first take their family's
//! class, the others the class `node`.

use super::RuleMatch;

/// One class: its name in the API and filters, and its label on the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub name: &'static str,
    pub label: &'static str,
}

/// Every class, in the order the console shows them.
pub const CLASSES: [Class; 14] = [
    Class {
        name: "sqli",
        label: "SQL injection",
    },
    Class {
        name: "xss",
        label: "Cross-site scripting",
    },
    Class {
        name: "rce",
        label: "Remote command execution",
    },
    Class {
        name: "lfi",
        label: "Local file inclusion",
    },
    Class {
        name: "rfi",
        label: "Remote file inclusion",
    },
    Class {
        name: "php",
        label: "PHP injection",
    },
    Class {
        name: "nodejs",
        label: "Node.js injection",
    },
    Class {
        name: "java",
        label: "Java attack",
    },
    Class {
        name: "session_fixation",
        label: "Session fixation",
    },
    Class {
        name: "protocol",
        label: "Protocol violation",
    },
    Class {
        name: "scanner",
        label: "Scanner",
    },
    Class {
        name: "data_leakage",
        label: "Data leakage",
    },
    Class {
        name: "node",
        label: "Node rule",
    },
    Class {
        name: "other",
        label: "Other",
    },
];

/// The class of one rule; `None` for a rule that only sums up others (anomaly evaluation,
/// correlation) or sets CRS up.
pub fn of_rule(id: u32) -> Option<&'static str> {
    match id {
        // 100930: the last three digits name the CRS family it stands beside.
        100_000..=199_999 => Some(match of_crs_family(id % 1000) {
            Some("other") | None => "node",
            Some(class) => class,
        }),
        200_000..=299_999 => Some("node"),
        _ => of_crs_family(id / 1000),
    }
}

fn of_crs_family(family: u32) -> Option<&'static str> {
    Some(match family {
        913 => "scanner",
        911 | 920 | 921 => "protocol",
        930 => "lfi",
        931 => "rfi",
        932 => "rce",
        933 => "php",
        934 => "nodejs",
        941 => "xss",
        942 => "sqli",
        943 => "session_fixation",
        944 => "java",
        950..=958 => "data_leakage",
        // 949 and 959: the inbound and outbound scores; 980: correlation; 900–912: set-up.
        900..=912 | 949 | 959 | 980 => return None,
        _ => "other",
    })
}

/// How bad a severity is, for ordering (CRITICAL highest), in any case; an unknown one is
/// lowest.
pub fn severity_rank(severity: &str) -> u8 {
    match severity.to_ascii_uppercase().as_str() {
        "EMERGENCY" => 8,
        "ALERT" => 7,
        "CRITICAL" => 6,
        "ERROR" => 5,
        "WARNING" => 4,
        "NOTICE" => 3,
        "INFO" => 2,
        "DEBUG" => 1,
        _ => 0,
    }
}

/// The classes of an attack: the primary one first (that of its most severe classed rule,
/// the first matched among equals), then the others in the order matched, each once. An
/// attack whose rules have no class (only a score was passed) is `other`.
pub fn of_rules(rules: &[RuleMatch]) -> Vec<&'static str> {
    let mut primary: Option<(u8, &'static str)> = None;
    let mut all: Vec<&'static str> = Vec::new();
    for rule in rules {
        let Some(class) = of_rule(rule.id) else {
            continue;
        };
        let rank = severity_rank(&rule.severity);
        if primary.is_none_or(|(best, _)| rank > best) {
            primary = Some((rank, class));
        }
        if !all.contains(&class) {
            all.push(class);
        }
    }
    match primary {
        Some((_, first)) => {
            all.retain(|c| *c != first);
            all.insert(0, first);
            all
        }
        None => vec!["other"],
    }
}

/// The severity of an attack: the highest among its rules that name an attack, else among all
/// of them (`NOTICE` when none says).
pub fn severity(rules: &[RuleMatch]) -> &str {
    let highest = |classed: bool| {
        rules
            .iter()
            .filter(|r| !classed || of_rule(r.id).is_some())
            .max_by_key(|r| severity_rank(&r.severity))
            .map(|r| r.severity.as_str())
    };
    highest(true).or_else(|| highest(false)).unwrap_or("NOTICE")
}

/// The label of a class name (the name itself when unknown).
pub fn label(name: &str) -> &str {
    CLASSES
        .iter()
        .find(|c| c.name == name)
        .map_or(name, |c| c.label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: u32, severity: &str) -> RuleMatch {
        RuleMatch {
            id,
            msg: String::new(),
            severity: severity.into(),
            data: String::new(),
        }
    }

    #[test]
    fn every_family_the_issue_names() {
        for (id, class) in [
            (913_100, Some("scanner")),
            (920_350, Some("protocol")),
            (921_110, Some("protocol")),
            (911_100, Some("protocol")),
            (930_120, Some("lfi")),
            (931_100, Some("rfi")),
            (932_160, Some("rce")),
            (933_160, Some("php")),
            (934_100, Some("nodejs")),
            (941_100, Some("xss")),
            (942_100, Some("sqli")),
            (943_120, Some("session_fixation")),
            (944_100, Some("java")),
            (950_100, Some("data_leakage")),
            (951_110, Some("data_leakage")),
            (954_100, Some("data_leakage")),
            (949_110, None),
            (959_100, None),
            (980_130, None),
            (901_001, None),
            (100_930, Some("lfi")),
            (100_001, Some("node")),
            (200_002, Some("node")),
            (999_999, Some("other")),
        ] {
            assert_eq!(of_rule(id), class, "{id}");
        }
        // Every name given is one the console knows.
        for id in [913_000, 920_000, 930_000, 950_000, 200_000, 999_000] {
            let name = of_rule(id).unwrap();
            assert_ne!(label(name), name, "{name}");
        }
    }

    #[test]
    fn the_primary_class_is_the_most_severe_then_the_first() {
        let rules = [
            rule(920_350, "WARNING"),
            rule(942_100, "CRITICAL"),
            rule(941_100, "CRITICAL"),
            rule(949_110, "EMERGENCY"),
            rule(942_200, "CRITICAL"),
        ];
        assert_eq!(of_rules(&rules), ["sqli", "protocol", "xss"]);
        assert_eq!(of_rules(&[rule(949_110, "CRITICAL")]), ["other"]);
        assert_eq!(severity(&rules), "CRITICAL");
        assert_eq!(severity(&[rule(949_110, "EMERGENCY")]), "EMERGENCY");
        assert_eq!(severity(&[]), "NOTICE");
        assert_eq!(of_rules(&[]), ["other"]);
    }
}

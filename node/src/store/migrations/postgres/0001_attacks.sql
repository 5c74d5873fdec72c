-- The attacks, with the exchange as analysed (PostgreSQL; sqlite/0001_attacks.sql is the same
-- schema). Rules, headers and classes are JSON text; the columns the filters use are scalar
-- and indexed.
CREATE TABLE attacks (
    -- Byte order, as SQLite compares: "newest first" breaks ties by id the same way on both.
    id                 TEXT COLLATE "C" PRIMARY KEY,
    request_id         TEXT,
    ts_ns              BIGINT NOT NULL,
    source             TEXT,
    source_ip          TEXT,
    method             TEXT NOT NULL,
    authority          TEXT,
    -- The authority lowercased, without its port: what the host filter compares.
    host               TEXT,
    path               TEXT NOT NULL,
    protocol           TEXT,
    status             BIGINT,
    class              TEXT NOT NULL,
    classes            TEXT NOT NULL,
    severity           TEXT NOT NULL,
    rules              TEXT NOT NULL,
    request_headers    TEXT NOT NULL,
    request_body       TEXT NOT NULL,
    request_body_size  BIGINT NOT NULL,
    response_headers   TEXT NOT NULL,
    response_body      TEXT NOT NULL,
    response_body_size BIGINT NOT NULL
);
CREATE INDEX attacks_ts ON attacks (ts_ns, id);
CREATE INDEX attacks_host ON attacks (host, ts_ns);
CREATE INDEX attacks_source_ip ON attacks (source_ip, ts_ns);
CREATE INDEX attacks_class ON attacks (class, ts_ns);
CREATE INDEX attacks_severity ON attacks (severity, ts_ns);
CREATE INDEX attacks_status ON attacks (status, ts_ns);

-- One row per (attack, rule): the rule filter.
CREATE TABLE attack_rules (
    rule_id   BIGINT NOT NULL,
    attack_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (rule_id, attack_id)
);
CREATE INDEX attack_rules_attack ON attack_rules (attack_id);

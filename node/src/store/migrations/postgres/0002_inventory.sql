-- API discovery (PostgreSQL; sqlite/0002_inventory.sql is the same schema): the endpoints seen
-- per host, what was seen on each, and what the bounds cut. Every count is a sum: replicas
-- add their deltas with upserts, so one shared store holds one inventory.
CREATE TABLE inventory_endpoints (
    host     TEXT COLLATE "C" NOT NULL,
    method   TEXT COLLATE "C" NOT NULL,
    template TEXT COLLATE "C" NOT NULL,
    count    BIGINT NOT NULL,
    first_ns BIGINT NOT NULL,
    last_ns  BIGINT NOT NULL,
    PRIMARY KEY (host, method, template)
);

-- One row per (endpoint, fact): kind (status, req_type, resp_type, req_body, resp_body,
-- req_field, resp_field, query, auth, sensitive, param), scope, name and type. Names and types
-- only, never a value.
CREATE TABLE inventory_facts (
    host     TEXT COLLATE "C" NOT NULL,
    method   TEXT COLLATE "C" NOT NULL,
    template TEXT COLLATE "C" NOT NULL,
    kind     TEXT COLLATE "C" NOT NULL,
    scope    TEXT COLLATE "C" NOT NULL,
    name     TEXT COLLATE "C" NOT NULL,
    ty       TEXT COLLATE "C" NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (host, method, template, kind, scope, name, ty)
);

-- What the bounds left out, per host ('*': hosts past the host bound) and reason.
CREATE TABLE inventory_cuts (
    host   TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (host, reason)
);

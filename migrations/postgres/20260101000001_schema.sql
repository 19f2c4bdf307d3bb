-- Loka Stratum share store, PostgreSQL (the production store).
--
-- The seed's six tables (pools, miners, workers, submissions, earnings, distributions) with
-- their constraints and indexes. Deviations from the seed, each on purpose:
--
-- * pools.host is VARCHAR(255), not INET: upstream pools are configured by DNS name
--   (stratum.example.com) far more often than by address, and the proxy records the host it
--   was configured with. pools.password is never written by the proxy (secrets stay in the
--   configuration / Kubernetes Secrets); the column exists for the seed's shape.
-- * workers.worker_name holds the full login the miner authorized with ("alice.rig1"); the
--   miner is the part before the first dot ("alice"). workers.connection_id is the proxy's
--   id of the connection that last authorized the worker, so a disconnect is applied to the
--   right row (guarded by connected_at, because ids restart with the process).
-- * submissions is range-partitioned by month on submitted_at (see below), has extranonce1,
--   version and block_hash columns (audit of what was hashed), and extranonce2 is
--   VARCHAR(32): the configuration allows miner extranonce2 sizes up to 16 bytes.
-- * Decimal columns are NUMERIC as in the seed; the proxy never uses floats for money.

CREATE TABLE pools (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL UNIQUE,
    host VARCHAR(255) NOT NULL CHECK (length(host) > 0),
    port INTEGER NOT NULL CHECK (port > 0 AND port <= 65535),
    username VARCHAR(255) NOT NULL,
    password VARCHAR(255),
    active BOOLEAN NOT NULL DEFAULT true,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE INDEX idx_pools_name ON pools(name);
CREATE INDEX idx_pools_active ON pools(active);
CREATE INDEX idx_pools_host_port ON pools(host, port);

CREATE TABLE miners (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    username VARCHAR(255) NOT NULL UNIQUE,
    email VARCHAR(255),
    btc_address VARCHAR(64),
    active BOOLEAN NOT NULL DEFAULT true,
    last_seen TIMESTAMP WITH TIME ZONE,
    settings JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    CONSTRAINT valid_btc_address CHECK (
        btc_address IS NULL OR
        (LENGTH(btc_address) >= 26 AND LENGTH(btc_address) <= 62)
    )
);
CREATE UNIQUE INDEX idx_miners_username ON miners(username);
CREATE INDEX idx_miners_active ON miners(active);
CREATE INDEX idx_miners_last_seen ON miners(last_seen DESC);
CREATE INDEX idx_miners_btc_address ON miners(btc_address);

CREATE TABLE workers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    miner_id UUID NOT NULL REFERENCES miners(id) ON DELETE CASCADE,
    pool_id UUID NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    worker_name VARCHAR(255) NOT NULL,
    remote_addr INET,
    user_agent VARCHAR(255),
    active BOOLEAN NOT NULL DEFAULT false,
    connected_at TIMESTAMP WITH TIME ZONE,
    last_activity TIMESTAMP WITH TIME ZONE,
    disconnect_reason VARCHAR(255),
    connection_id BIGINT,
    session_data JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    UNIQUE(miner_id, pool_id, worker_name)
);
CREATE INDEX idx_workers_miner_id ON workers(miner_id);
CREATE INDEX idx_workers_pool_id ON workers(pool_id);
CREATE INDEX idx_workers_active ON workers(active);
CREATE INDEX idx_workers_last_activity ON workers(last_activity DESC);
CREATE INDEX idx_workers_worker_name ON workers(worker_name);

-- submissions: the hot table, range-partitioned by month on submitted_at, so retention is
-- DROP TABLE of a whole partition, never a DELETE.
--
-- The unique key. PostgreSQL requires every unique constraint of a partitioned table to
-- contain the partition key, so the seed's UNIQUE(worker_id, job_id, extranonce2, ntime,
-- nonce) cannot be declared as is. We declare it with submitted_at added, and make
-- submitted_at part of the share's identity: it is the instant the proxy judged the share
-- (ShareEvent.at, truncated to microseconds), fixed once when the writer takes the event and
-- carried unchanged through the spool. A retried or replayed batch therefore carries the very
-- same (worker, job, extranonce2, ntime, nonce, submitted_at) and ON CONFLICT DO NOTHING makes
-- it harmless: every judged share is stored exactly once. What the key no longer forbids is a
-- second, genuinely new submission of the same work at a later instant; that is the Stratum
-- layer's job (it answers error 22 "duplicate" and records the attempt as a rejected row,
-- which the seed's literal key would have silently discarded). A separate non-partitioned
-- dedupe table was rejected: it doubles the write cost of the hottest path and grows without
-- the partition retention.
--
-- submitted_at sits second in the key so the key's index also serves "this worker's shares
-- since T" (the /stats/workers history and the seed's common queries); the seed's
-- idx_submissions_worker_id is its prefix and is therefore not created separately. The id is a
-- UUIDv7 assigned by the writer (time-ordered, so the primary key index appends).
CREATE TABLE submissions (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    worker_id UUID NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    job_id VARCHAR(64) NOT NULL,
    extranonce1 VARCHAR(16),
    extranonce2 VARCHAR(32) NOT NULL,
    ntime VARCHAR(8) NOT NULL,
    nonce VARCHAR(8) NOT NULL,
    version VARCHAR(8),
    accepted BOOLEAN NOT NULL,
    reject_reason VARCHAR(255),
    difficulty DECIMAL(20,8) NOT NULL CHECK (difficulty >= 0),
    hash_rate BIGINT,
    block_hash VARCHAR(64),
    submitted_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (id, submitted_at),
    CONSTRAINT submissions_share_key
        UNIQUE (worker_id, submitted_at, job_id, extranonce2, ntime, nonce)
) PARTITION BY RANGE (submitted_at);

-- Not created: the seed's idx_submissions_worker_id (the share key's leading column serves it)
-- and idx_submissions_accepted (a boolean: no query can use it selectively, and it cost 12%
-- of the insert rate measured on this table). Queries filter accepted rows inside the
-- per-worker / per-window ranges the other indexes give.
CREATE INDEX idx_submissions_submitted_at ON submissions(submitted_at DESC);
CREATE INDEX idx_submissions_job_id ON submissions(job_id);
CREATE INDEX idx_submissions_submitted_at_month ON submissions
    USING BRIN (submitted_at) WITH (pages_per_range = 128);

-- One partition per UTC month, named submissions_YYYY_MM.
CREATE FUNCTION loka_submission_partition(at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start TIMESTAMP := date_trunc('month', at AT TIME ZONE 'UTC');
    part TEXT := 'submissions_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF submissions FOR VALUES FROM (%L) TO (%L)',
                part,
                to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                to_char(month_start + INTERVAL '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
        EXCEPTION WHEN duplicate_table THEN
            NULL; -- another proxy replica created it first
        END;
    END IF;
    RETURN part;
END $$;

-- The current month and `ahead` months after it (called at start-up and hourly).
CREATE FUNCTION loka_ensure_submission_partitions(ahead INTEGER) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    m INTEGER;
BEGIN
    FOR m IN 0..ahead LOOP
        RETURN NEXT loka_submission_partition(NOW() + make_interval(months => m));
    END LOOP;
END $$;

-- Retention: drop whole partitions that end before the start of the month `keep_months`
-- months before the current one (keep_months = 0 keeps only the current month).
CREATE FUNCTION loka_drop_submission_partitions(keep_months INTEGER) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    cutoff TIMESTAMP := date_trunc('month', NOW() AT TIME ZONE 'UTC')
        - make_interval(months => keep_months);
    part RECORD;
BEGIN
    FOR part IN
        SELECT c.relname AS name
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'submissions'::regclass
          AND c.relname ~ '^submissions_[0-9]{4}_[0-9]{2}$'
          AND to_date(substr(c.relname, 13), 'YYYY_MM')::timestamp < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        RETURN NEXT part.name;
    END LOOP;
END $$;

SELECT loka_ensure_submission_partitions(2);

CREATE TABLE earnings (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    pool_id UUID NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    amount_btc DECIMAL(16,8) NOT NULL CHECK (amount_btc > 0),
    transaction_hash VARCHAR(64),
    block_hash VARCHAR(64),
    block_height INTEGER,
    fee_btc DECIMAL(16,8) DEFAULT 0 CHECK (fee_btc >= 0),
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    earned_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    processed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    CONSTRAINT valid_status CHECK (status IN ('pending', 'confirmed', 'distributed', 'failed'))
);
CREATE INDEX idx_earnings_pool_id ON earnings(pool_id);
CREATE INDEX idx_earnings_earned_at ON earnings(earned_at DESC);
CREATE INDEX idx_earnings_status ON earnings(status);
CREATE INDEX idx_earnings_block_height ON earnings(block_height DESC);
CREATE UNIQUE INDEX idx_earnings_tx_hash ON earnings(transaction_hash)
    WHERE transaction_hash IS NOT NULL;

CREATE TABLE distributions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    earning_id UUID NOT NULL REFERENCES earnings(id) ON DELETE CASCADE,
    miner_id UUID NOT NULL REFERENCES miners(id) ON DELETE CASCADE,
    amount_btc DECIMAL(16,8) NOT NULL CHECK (amount_btc > 0),
    percentage DECIMAL(5,4) NOT NULL CHECK (percentage > 0 AND percentage <= 1),
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    transaction_hash VARCHAR(64),
    distributed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    CONSTRAINT valid_status CHECK (status IN ('pending', 'sent', 'confirmed', 'failed')),
    -- one part per miner per earning: distributing twice cannot double-pay
    CONSTRAINT distributions_earning_miner UNIQUE (earning_id, miner_id)
);
CREATE INDEX idx_distributions_earning_id ON distributions(earning_id);
CREATE INDEX idx_distributions_miner_id ON distributions(miner_id);
CREATE INDEX idx_distributions_status ON distributions(status);
CREATE INDEX idx_distributions_distributed_at ON distributions(distributed_at DESC);

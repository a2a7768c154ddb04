-- Example data for bitmig: a source table `orders` and an empty `orders_archive` of the same shape, the
-- target of examples/orders.toml. Runs on MySQL 8 and MariaDB 10.11 (docker-compose.yml loads it into the
-- mysql service's database `shop`; scripts/demo loads it into the local MariaDB).
--
-- Row count: @rows when the session set it before this file (scripts/demo does), else 50 000.
-- The ids have gaps, as a real table's do: 3 missing after every 7, and a hole of 25 000 ids (whole empty
-- groups at the default group size) after the first half of the rows. Every value is derived from the row
-- number, so a load with the same @rows always gives the same table (and the same CHECKSUM TABLE).
SET @rows = COALESCE(@rows, 50000);

DROP TABLE IF EXISTS orders_archive;
DROP TABLE IF EXISTS orders;

CREATE TABLE orders (
  id         BIGINT UNSIGNED NOT NULL,
  user_id    BIGINT          NOT NULL,
  amount     DECIMAL(12, 2)  NOT NULL,
  status     TINYINT         NOT NULL,
  note       VARCHAR(64)     NULL,
  created_at DATETIME        NOT NULL,
  updated_at DATETIME        NOT NULL,
  PRIMARY KEY (id),
  KEY idx_orders_user_id (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The row numbers 0 .. @rows-1 come from three copies of a 1000-row recursive CTE. Its 999 iterations stay
-- under both servers' default recursion limits (MySQL's cte_max_recursion_depth errors past 1000; MariaDB's
-- max_recursive_iterations silently stops there), so no session variable has to be raised.
INSERT INTO orders (id, user_id, amount, status, note, created_at, updated_at)
WITH RECURSIVE digits (d) AS (
  SELECT 0
  UNION ALL
  SELECT d + 1 FROM digits WHERE d < 999
),
numbered (n) AS (
  SELECT a.d * 1000000 + b.d * 1000 + c.d
  FROM digits AS a
  CROSS JOIN digits AS b
  CROSS JOIN digits AS c
  WHERE a.d * 1000000 < @rows
    AND a.d * 1000000 + b.d * 1000 < @rows
    AND a.d * 1000000 + b.d * 1000 + c.d < @rows
),
keyed (n, id, user_id) AS (
  SELECT
    n,
    1 + n + 3 * (n DIV 7) + CASE WHEN n >= @rows DIV 2 THEN 25000 ELSE 0 END,
    1 + (n * 7919) % 20000
  FROM numbered
)
SELECT
  id,
  user_id,
  CAST(((n * 7727) % 1000000) / 100 AS DECIMAL(12, 2)),
  n % 5,
  CASE WHEN n % 10 = 0 THEN NULL ELSE CONCAT('order ', id, ' of user ', user_id) END,
  TIMESTAMP '2023-01-01 00:00:00' + INTERVAL (n * 63072000 DIV @rows) SECOND,
  TIMESTAMP '2023-01-01 00:00:00' + INTERVAL (n * 63072000 DIV @rows) SECOND + INTERVAL (n % 1000) MINUTE
FROM keyed;

CREATE TABLE orders_archive LIKE orders;

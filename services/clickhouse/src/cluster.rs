//! The schema on a ClickHouse cluster (`clickhouse.cluster`, README § Operations, A
//! ClickHouse cluster). Each table is `<name>_local` on every shard, behind a Distributed
//! table of the table's own name, so readers, writers and views name tables as on a single
//! server. Statements that change a table's rows in place (mutations, dropped partitions)
//! go to the local tables on every shard.
//!
//! A table is sharded by some of the columns a ReplacingMergeTree replaces by, so that a
//! row and the rows it replaces meet on one shard: a customer's facts and journeys by the
//! customer, a partition's markers, claims and counts by the partition. Joins and IN
//! across tables are GLOBAL (written into the views; cxstream's own queries set
//! `distributed_product_mode = global`): the right side is read whole on the server asked,
//! so they are exact whatever shard a row is on.

/// A cluster's name, as in the servers' `remote_servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error(
        "clickhouse.cluster `{0}` must be letters, digits and _ only, not starting with a digit"
    )]
    Name(String),
    #[error("table {0} has no shard key: add one to cluster::shard_key")]
    NoShardKey(String),
    #[error("statement has no form on a cluster: {0}")]
    Unsupported(String),
}

impl Cluster {
    pub fn new(name: &str) -> Result<Cluster, ClusterError> {
        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Cluster(name.to_string()))
        } else {
            Err(ClusterError::Name(name.to_string()))
        }
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// How cxstream's tables are laid out: on one server, or on a cluster's shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout(Option<Cluster>);

impl Layout {
    pub fn single() -> Layout {
        Layout(None)
    }

    pub fn on(cluster: Cluster) -> Layout {
        Layout(Some(cluster))
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.0.as_ref()
    }

    /// ` ON CLUSTER name` for a DDL statement, or nothing on one server.
    pub fn on_cluster(&self) -> String {
        self.0
            .as_ref()
            .map_or(String::new(), |c| format!(" ON CLUSTER {}", c.name()))
    }

    /// What an `ALTER TABLE` that changes rows names for `table` (unqualified or
    /// `db.table`): the table itself, or each shard's local table.
    pub fn altered(&self, table: &str) -> String {
        match &self.0 {
            None => table.to_string(),
            Some(c) => format!("{} ON CLUSTER {}", local(table), c.name()),
        }
    }

    /// The table whose parts and mutations the server lists for `table`.
    pub fn stored(&self, table: &str) -> String {
        match &self.0 {
            None => table.to_string(),
            Some(_) => local(table),
        }
    }

    /// A system table of every server of the layout (`parts`, `mutations`).
    pub fn system(&self, table: &str) -> String {
        match &self.0 {
            None => format!("system.{table}"),
            Some(c) => format!("cluster('{}', system, {table})", c.name()),
        }
    }
}

/// The local table behind Distributed `table` (either unqualified or `db.table`).
pub fn local(table: &str) -> String {
    format!("{table}_local")
}

/// The shard key of each table, by its name without the database.
pub fn shard_key(table: &str) -> Option<&'static str> {
    // Tables that migrations copy a table into, or keep it under while swapping.
    let base = ["_by_journey", "_before_journeys"]
        .iter()
        .find_map(|s| table.strip_suffix(s))
        .unwrap_or(table);
    let key = match base {
        "touchpoints" | "survey_answers" | "stage_entries" | "step_attempts" | "cases"
        | "case_closures" | "journeys" | "journeys_compacted" | "journey_state" => {
            "cityHash64(customer_id)"
        }
        "metrics_minute"
        | "metrics_minute_compacted"
        | "steps_minute"
        | "steps_minute_compacted"
        | "ingest_batches"
        | "compactions"
        | "partition_claims"
        | "refused_events" => "cityHash64(journey, source_partition)",
        "journey_stages" => "cityHash64(journey, stage)",
        "journey_steps" => "cityHash64(journey, step)",
        "journey_map_positions" => "cityHash64(journey, list)",
        "alerts" => "cityHash64(journey_group, id)",
        "alerter_snapshots" => "cityHash64(journey_group)",
        "schema_migrations" => "version",
        _ => return None,
    };
    Some(key)
}

/// The statements that do on `cluster` what `statement` (its `{db}` already `db`) does on
/// a single server.
pub fn rewrite(statement: &str, db: &str, cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let c = cluster.name();
    let unsupported = || ClusterError::Unsupported(statement.chars().take(80).collect());
    let words = Words::new(statement);
    match words.head(2).as_slice() {
        ["CREATE", "TABLE"] => {
            let (ine, name, rest) = words.named(2, "IF NOT EXISTS").ok_or_else(unsupported)?;
            let table = unqualified(name);
            let key = shard_key(table).ok_or_else(|| ClusterError::NoShardKey(table.into()))?;
            // `CREATE TABLE t AS other ENGINE = ...` takes other's columns: the local one's.
            let rest = match rest.strip_prefix("AS ") {
                Some(r) => {
                    let (source, tail) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
                    format!("AS {} {tail}", local(source))
                }
                None => rest.to_string(),
            };
            Ok(vec![
                format!("CREATE TABLE {ine}{} ON CLUSTER {c} {rest}", local(name)),
                distributed(&ine, db, table, key, c),
            ])
        }
        ["CREATE", "VIEW"] => {
            let (ine, name, rest) = words.named(2, "IF NOT EXISTS").ok_or_else(unsupported)?;
            let rest = global_subqueries(rest);
            Ok(vec![format!(
                "CREATE VIEW {ine}{name} ON CLUSTER {c} {rest}"
            )])
        }
        ["ALTER", "TABLE"] => {
            let (_, name, rest) = words.named(2, "").ok_or_else(unsupported)?;
            Ok(vec![
                format!("ALTER TABLE {} ON CLUSTER {c} {rest}", local(name)),
                format!("ALTER TABLE {name} ON CLUSTER {c} {rest}"),
            ])
        }
        ["DROP", "TABLE"] => {
            let (ine, name, rest) = words.named(2, "IF EXISTS").ok_or_else(unsupported)?;
            if !rest.is_empty() {
                return Err(unsupported());
            }
            // A view has no local table: the second finds nothing.
            Ok(vec![
                format!("DROP TABLE {ine}{name} ON CLUSTER {c}"),
                format!("DROP TABLE IF EXISTS {} ON CLUSTER {c}", local(name)),
            ])
        }
        ["RENAME", "TABLE"] => renames(statement, db, c).ok_or_else(unsupported),
        ["INSERT", "INTO"] => Ok(vec![statement.to_string()]),
        _ => Err(unsupported()),
    }
}

/// `sql` with every join and `IN (SELECT ...)` made GLOBAL: the right side is read once,
/// whole, by the server asked, and sent to the shards. A view is checked when each shard
/// creates it, under the shard's settings, where a join or IN of two Distributed tables
/// without GLOBAL is refused; cxstream's own queries set `distributed_product_mode`
/// instead.
fn global_subqueries(sql: &str) -> String {
    let words: Vec<(usize, &str)> = sql
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - sql.as_ptr() as usize, w))
        .collect();
    let mut at = Vec::new();
    for (i, (start, word)) in words.iter().enumerate() {
        let before = |n: usize| i.checked_sub(n).map(|j| words[j]);
        match *word {
            "JOIN" => {
                if let (Some((s, "ANY" | "ALL")), Some((_, "INNER" | "LEFT" | "RIGHT" | "FULL"))) =
                    (before(2), before(1))
                {
                    at.push(s);
                }
            }
            "IN" => {
                let rest = sql[start + 2..].trim_start();
                let subquery = rest
                    .strip_prefix('(')
                    .is_some_and(|r| r.trim_start().starts_with("SELECT"));
                if subquery {
                    at.push(match before(1) {
                        Some((s, "NOT")) => s,
                        _ => *start,
                    });
                }
            }
            _ => {}
        }
    }
    let mut out = String::with_capacity(sql.len() + 7 * at.len());
    let mut from = 0;
    for a in at {
        out.push_str(&sql[from..a]);
        out.push_str("GLOBAL ");
        from = a;
    }
    out.push_str(&sql[from..]);
    out
}

/// The Distributed table `db.table` over each shard's `db.table_local`.
fn distributed(ine: &str, db: &str, table: &str, key: &str, c: &str) -> String {
    format!(
        "CREATE TABLE {ine}{db}.{table} ON CLUSTER {c} AS {db}.{table}_local \
         ENGINE = Distributed({c}, {db}, {table}_local, {key})"
    )
}

/// `RENAME TABLE a TO b, c TO d`: the local tables are renamed on every shard; the
/// Distributed tables name their local table, so they are made again for the new names.
fn renames(statement: &str, db: &str, c: &str) -> Option<Vec<String>> {
    let pairs: Vec<(&str, &str)> = statement
        .strip_prefix("RENAME TABLE")?
        .split(',')
        .map(|p| {
            let (from, to) = p.split_once(" TO ")?;
            Some((from.trim(), to.trim()))
        })
        .collect::<Option<_>>()?;
    let locals: Vec<String> = pairs
        .iter()
        .map(|(f, t)| format!("{} TO {}", local(f), local(t)))
        .collect();
    let mut out = vec![format!("RENAME TABLE {} ON CLUSTER {c}", locals.join(", "))];
    let mut names: Vec<&str> = pairs.iter().flat_map(|(f, t)| [*f, *t]).collect();
    names.sort_unstable();
    names.dedup();
    for name in &names {
        out.push(format!("DROP TABLE IF EXISTS {name} ON CLUSTER {c}"));
    }
    for (_, to) in &pairs {
        let table = unqualified(to);
        out.push(distributed(
            "IF NOT EXISTS ",
            db,
            table,
            shard_key(table)?,
            c,
        ));
    }
    Some(out)
}

/// Makes the Distributed table `db.table` over its local tables if it is not there (after
/// a migration that swaps tables was interrupted).
pub fn distributed_table(db: &str, table: &str, cluster: &Cluster) -> Result<String, ClusterError> {
    let key = shard_key(table).ok_or_else(|| ClusterError::NoShardKey(table.into()))?;
    Ok(distributed(
        "IF NOT EXISTS ",
        db,
        table,
        key,
        cluster.name(),
    ))
}

/// `table` of `db.table`.
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// A statement's leading words, with where each starts.
struct Words<'a> {
    text: &'a str,
    words: Vec<(usize, &'a str)>,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Words<'a> {
        let mut words = Vec::new();
        let mut start = None;
        for (i, ch) in text.char_indices() {
            // A name ends at whitespace or at the column list's parenthesis.
            let gap = ch.is_whitespace() || ch == '(';
            match (start, gap) {
                (None, false) => start = Some(i),
                (Some(s), true) => {
                    words.push((s, &text[s..i]));
                    start = None;
                    if words.len() == 8 {
                        break;
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            words.push((s, &text[s..]));
        }
        Words { text, words }
    }

    fn head(&self, n: usize) -> Vec<&'a str> {
        self.words.iter().take(n).map(|(_, w)| *w).collect()
    }

    /// After the first `skip` words: the optional clause `optional` (returned with a
    /// trailing space when present), the object's name, and the text after it.
    fn named(&self, skip: usize, optional: &str) -> Option<(String, &'a str, &'a str)> {
        let clause: Vec<&str> = optional.split_whitespace().collect();
        let after: Vec<&str> = self.head(skip + clause.len())[skip..].to_vec();
        let (ine, at) = if !clause.is_empty() && after == clause {
            (format!("{optional} "), skip + clause.len())
        } else {
            (String::new(), skip)
        };
        let (start, name) = *self.words.get(at)?;
        let rest = self.text[start + name.len()..].trim();
        Some((ine, name, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::MIGRATIONS;

    fn c() -> Cluster {
        Cluster::new("two").unwrap()
    }

    #[test]
    fn every_migration_has_a_cluster_form() {
        for m in MIGRATIONS {
            for st in m.statements("cx") {
                let out = rewrite(&st, "cx", &c());
                assert!(out.is_ok(), "migration {}: {out:?}", m.version);
            }
        }
    }

    #[test]
    fn a_table_becomes_local_tables_behind_a_distributed_one() {
        let out = rewrite(
            "CREATE TABLE IF NOT EXISTS cx.ingest_batches\n(\n  a Int64\n)\nENGINE = MergeTree ORDER BY a",
            "cx",
            &c(),
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "CREATE TABLE IF NOT EXISTS cx.ingest_batches_local ON CLUSTER two (\n  a Int64\n)\nENGINE = MergeTree ORDER BY a",
                "CREATE TABLE IF NOT EXISTS cx.ingest_batches ON CLUSTER two AS cx.ingest_batches_local \
                 ENGINE = Distributed(two, cx, ingest_batches_local, cityHash64(journey, source_partition))",
            ]
        );
        let copy = rewrite(
            "CREATE TABLE cx.touchpoints_by_journey AS cx.touchpoints\nENGINE = ReplacingMergeTree ORDER BY a",
            "cx",
            &c(),
        )
        .unwrap();
        assert_eq!(
            copy[0],
            "CREATE TABLE cx.touchpoints_by_journey_local ON CLUSTER two AS cx.touchpoints_local ENGINE = ReplacingMergeTree ORDER BY a"
        );
        assert!(copy[1].ends_with("cityHash64(customer_id))"));
    }

    #[test]
    fn views_alters_drops_and_renames() {
        let view = rewrite("CREATE VIEW IF NOT EXISTS cx.v AS SELECT 1", "cx", &c()).unwrap();
        assert_eq!(
            view,
            ["CREATE VIEW IF NOT EXISTS cx.v ON CLUSTER two AS SELECT 1"]
        );
        let alter = rewrite("ALTER TABLE cx.alerts ADD COLUMN a UInt8", "cx", &c()).unwrap();
        assert_eq!(
            alter,
            [
                "ALTER TABLE cx.alerts_local ON CLUSTER two ADD COLUMN a UInt8",
                "ALTER TABLE cx.alerts ON CLUSTER two ADD COLUMN a UInt8",
            ]
        );
        let drop = rewrite("DROP TABLE IF EXISTS cx.v", "cx", &c()).unwrap();
        assert_eq!(
            drop,
            [
                "DROP TABLE IF EXISTS cx.v ON CLUSTER two",
                "DROP TABLE IF EXISTS cx.v_local ON CLUSTER two",
            ]
        );
        let swap = rewrite(
            "RENAME TABLE cx.cases TO cx.cases_before_journeys,\n cx.cases_by_journey TO cx.cases",
            "cx",
            &c(),
        )
        .unwrap();
        assert_eq!(
            swap[0],
            "RENAME TABLE cx.cases_local TO cx.cases_before_journeys_local, \
             cx.cases_by_journey_local TO cx.cases_local ON CLUSTER two"
        );
        assert_eq!(swap.len(), 1 + 3 + 2);
        assert!(
            swap[4].starts_with("CREATE TABLE IF NOT EXISTS cx.cases_before_journeys ON CLUSTER")
        );
        assert!(swap[5].contains("Distributed(two, cx, cases_local, cityHash64(customer_id))"));
    }

    #[test]
    fn joins_and_subqueries_of_views_are_global() {
        let view = "SELECT a FROM t ANY LEFT JOIN\n(SELECT 1) USING a ARRAY JOIN xs AS x \
                    WHERE (a, b) IN\n    (SELECT a, b FROM u) AND c NOT IN (SELECT c FROM v) \
                    AND d IN ('x') ALL INNER JOIN w USING d";
        assert_eq!(
            global_subqueries(view),
            "SELECT a FROM t GLOBAL ANY LEFT JOIN\n(SELECT 1) USING a ARRAY JOIN xs AS x \
             WHERE (a, b) GLOBAL IN\n    (SELECT a, b FROM u) AND c GLOBAL NOT IN (SELECT c FROM v) \
             AND d IN ('x') GLOBAL ALL INNER JOIN w USING d"
        );
    }

    #[test]
    fn unknown_tables_and_statements_are_refused() {
        assert_eq!(
            rewrite("CREATE TABLE cx.mystery (a Int8) ENGINE = Log", "cx", &c()),
            Err(ClusterError::NoShardKey("mystery".into()))
        );
        assert!(rewrite("OPTIMIZE TABLE cx.touchpoints", "cx", &c()).is_err());
        assert!(Cluster::new("a-b").is_err());
        assert!(Cluster::new("2shards").is_err());
        assert!(Cluster::new("cx_two_shards").is_ok());
    }

    #[test]
    fn layouts_name_what_alters_change() {
        let single = Layout::single();
        assert_eq!(single.altered("journeys"), "journeys");
        assert_eq!(single.system("parts"), "system.parts");
        let on = Layout::on(c());
        assert_eq!(on.altered("journeys"), "journeys_local ON CLUSTER two");
        assert_eq!(on.stored("journeys"), "journeys_local");
        assert_eq!(on.system("mutations"), "cluster('two', system, mutations)");
    }
}

//! The positions of a journey map's names. Stored journeys hold a map's stages,
//! touchpoints, channels, segments and steps as positions in the map's lists, so a list
//! changed in place between two runs (a name inserted, moved or removed) would have every
//! stored journey read wrong, silently. `journey_map_positions` keeps the lists each journey
//! last ran with; a journey service whose map changed a list other than by adding names at
//! its end is refused, with what moved.

use cxstream_core::JourneyMap;
use serde::{Deserialize, Serialize};

use crate::commit::now_secs;
use crate::{Context, Error, Result};

#[derive(Debug, clickhouse::Row, Serialize)]
struct PositionsRow {
    journey: String,
    list: String,
    names: Vec<String>,
    updated_at: u32,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredList {
    list: String,
    names: Vec<String>,
}

/// The lists of `map` whose positions stored journeys hold, by name.
fn lists(map: &JourneyMap) -> [(&'static str, Vec<&str>); 5] {
    [
        (
            "stages",
            map.stages.iter().map(|s| s.name.as_str()).collect(),
        ),
        (
            "touchpoints",
            map.touchpoints.iter().map(|t| t.name.as_str()).collect(),
        ),
        (
            "channels",
            map.channels.iter().map(String::as_str).collect(),
        ),
        (
            "segments",
            map.segments.iter().map(String::as_str).collect(),
        ),
        ("steps", map.steps.iter().map(|s| s.name.as_str()).collect()),
    ]
}

/// Where `now` stops being `was` with names added at its end: the position, the name that
/// was there, and the name there now (none when the list got shorter).
fn moved<'a>(was: &'a [String], now: &[&'a str]) -> Option<(usize, &'a str, Option<&'a str>)> {
    was.iter()
        .enumerate()
        .find(|(i, w)| now.get(*i) != Some(&w.as_str()))
        .map(|(i, w)| (i, w.as_str(), now.get(i).copied()))
}

/// Refuses `map` when a list moved since the journey last ran (see the module), and
/// records its lists otherwise.
pub async fn check(client: &clickhouse::Client, map: &JourneyMap) -> Result<()> {
    // A list only ever grows (anything else is refused), so the longest row is the latest.
    let stored: Vec<StoredList> = client
        .query(
            "SELECT list, argMax(names, length(names)) FROM journey_map_positions \
             WHERE journey = ? GROUP BY list",
        )
        .bind(&map.name)
        .fetch_all()
        .await
        .ctx(|| "read the journey map's positions".to_string())?;
    let lists = lists(map);
    let mut changed = Vec::new();
    for (list, now) in &lists {
        match stored.iter().find(|r| r.list == *list) {
            Some(r) => {
                if let Some(at) = moved(&r.names, now) {
                    return Err(Error::MapMoved(refusal(&map.name, list, at)));
                }
                if r.names.len() != now.len() {
                    changed.push((list, now));
                }
            }
            None => changed.push((list, now)),
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let mut ins = client
        .insert::<PositionsRow>("journey_map_positions")
        .await
        .ctx(|| "insert into journey_map_positions".to_string())?;
    for (list, now) in changed {
        let row = PositionsRow {
            journey: map.name.clone(),
            list: list.to_string(),
            names: now.iter().map(|n| n.to_string()).collect(),
            updated_at: now_secs(),
        };
        ins.write(&row)
            .await
            .ctx(|| "write a row of journey_map_positions".to_string())?;
    }
    ins.end()
        .await
        .ctx(|| "insert into journey_map_positions".to_string())
}

fn refusal(journey: &str, list: &str, (i, was, now): (usize, &str, Option<&str>)) -> String {
    let now = match now {
        Some(n) => format!("is now `{n}`"),
        None => "is gone".to_string(),
    };
    format!(
        "journey map `{journey}` changed its {list} in place: position {} was `{was}` and {now}. \
         Stored journeys hold positions in the map's lists, so names may only be added at the \
         end of a list: put `{was}` back at position {} (new names go at the end), or replay \
         the history into a new database",
        i + 1,
        i + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn was(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_added_at_the_end_move_nothing() {
        let stored = was(&["web", "app"]);
        assert_eq!(moved(&stored, &["web", "app"]), None);
        assert_eq!(moved(&stored, &["web", "app", "store"]), None);
        assert_eq!(moved(&[], &["web"]), None);
    }

    #[test]
    fn an_inserted_moved_or_removed_name_is_found_where_it_moved() {
        let stored = was(&["web", "app", "store"]);
        assert_eq!(
            moved(&stored, &["web", "kiosk", "app", "store"]),
            Some((1, "app", Some("kiosk")))
        );
        assert_eq!(
            moved(&stored, &["app", "web", "store"]),
            Some((0, "web", Some("app")))
        );
        assert_eq!(moved(&stored, &["web", "app"]), Some((2, "store", None)));
        let message = refusal("retail", "channels", (1, "app", Some("kiosk")));
        assert!(
            message.contains("position 2 was `app` and is now `kiosk`"),
            "{message}"
        );
    }
}

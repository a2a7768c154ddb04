//! `plan`: a month's tasks into the table, idempotently. For each move, each source index (a pattern is
//! resolved with `_cat/indices`, leaving out the move's own monthly indices) gets `{index}_{YYYYMM}_reindex`;
//! with `keep_months = k`, month M - k also gets its delete, `{index}_{YYYYMM}_delete`, which requires that
//! month's reindex — planned here too when it never was, so no month is deleted without its copy.

use bitmig_shared::cli::BadInput;
use bitmig_shared::es::{EsClient, EsError};
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, Month, Move};
use crate::table::{Kind, NewTask, TaskTable};

#[derive(Debug, Default, Serialize)]
pub struct PlanSummary {
    pub month: String,
    pub indices: Vec<String>,
    /// Ids inserted by this call.
    pub planned: Vec<String>,
    /// Ids that were already in the table.
    pub already_planned: Vec<String>,
}

/// The source indices of a move: the name itself, or what the pattern matches today.
pub async fn source_indices(es: &EsClient, mv: &Move) -> anyhow::Result<Vec<String>> {
    let path = format!("/_cat/indices/{}?format=json&h=index", mv.indices);
    let answer = match es.json(reqwest::Method::GET, &path, None).await {
        Ok(a) => a,
        Err(EsError::Permanent { status: 404, .. }) if !mv.indices.contains('*') => {
            return Err(BadInput(format!(
                "move `{}`: no such index in {}",
                mv.indices,
                es.label()
            ))
            .into())
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "listing indices `{}` in {}: {e}",
                mv.indices,
                es.label()
            ))
        }
    };
    let mut names: Vec<String> = answer
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["index"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let all = names.clone();
    names.retain(|n| !n.starts_with('.') && !mv.is_dest_of_any(n, &all));
    Ok(names)
}

fn reindex_task(mv: &Move, index: &str, month: Month) -> anyhow::Result<NewTask> {
    let dest = mv.dest_index(index, month);
    let query = mv.query(month).map_err(BadInput)?;
    Ok(NewTask {
        id: format!("{index}_{}_reindex", month.compact()),
        month: month.to_string(),
        start_time: format!("{} 00:00:00", month.first),
        end_time: format!("{} 00:00:00", month.end()),
        kind: Kind::Reindex,
        source_index: index.to_owned(),
        body: json!({"source": {"index": index, "query": query}, "dest": {"index": dest}}),
        dest_index: dest,
        requires: None,
    })
}

fn delete_task(mv: &Move, index: &str, month: Month) -> anyhow::Result<NewTask> {
    let query = mv.query(month).map_err(BadInput)?;
    Ok(NewTask {
        id: format!("{index}_{}_delete", month.compact()),
        month: month.to_string(),
        start_time: format!("{} 00:00:00", month.first),
        end_time: format!("{} 00:00:00", month.end()),
        kind: Kind::Delete,
        source_index: index.to_owned(),
        dest_index: mv.dest_index(index, month),
        body: json!({ "query": query }),
        requires: Some(format!("{index}_{}_reindex", month.compact())),
    })
}

pub async fn plan(
    cfg: &Config,
    es: &EsClient,
    table: &TaskTable,
    month: Month,
) -> anyhow::Result<PlanSummary> {
    let mut summary = PlanSummary {
        month: month.to_string(),
        ..Default::default()
    };
    for mv in &cfg.moves {
        let indices = source_indices(es, mv).await?;
        if indices.is_empty() {
            tracing::warn!(indices = %mv.indices, "no index matches; nothing planned for this move");
        }
        for index in &indices {
            let mut tasks = vec![reindex_task(mv, index, month)?];
            if let Some(k) = mv.keep_months {
                let old = month.minus(k);
                // The delete's reindex first: the delete never exists without it.
                tasks.push(reindex_task(mv, index, old)?);
                tasks.push(delete_task(mv, index, old)?);
            }
            for task in tasks {
                if table.insert(&task).await? {
                    tracing::info!(id = %task.id, "planned");
                    summary.planned.push(task.id);
                } else {
                    summary.already_planned.push(task.id);
                }
            }
        }
        summary.indices.extend(indices);
    }
    Ok(summary)
}

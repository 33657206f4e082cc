//! Cron schedules: next-run computation and the scheduler loop that starts scheduled builds.
//!
//! An expression has 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds
//! first (`*/2 * * * * *`), parsed by the `croner` crate, and is read in an IANA time zone
//! (`UTC` by default; pipeline schedules are always UTC). Each schedule row stores its next
//! run. One loop per server ([`run_scheduler`]) wakes every second, reads the due rows and
//! claims each with a compare-and-set on its next run (see `store::schedules`): with several
//! servers on one PostgreSQL database the `UPDATE` of only one of them matches, and only that
//! one triggers the build, so every slot fires once without row or advisory locks.
//!
//! A schedule that missed slots while no server ran (downtime, a long pause) fires once, not
//! once per missed slot: the build is recorded with `who` = `scheduler (catch-up)`, a log line
//! says how many slots were missed, and the next run is the first slot after now.

use super::builds::{BuildContext, TriggerRequest};
use crate::exec::CancelSignal;
use crate::store::schedules::{NewSchedule, SOURCE_API, SOURCE_PIPELINE, ScheduleRecord};
use crate::store::{Store, StoreError, now_ms};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::time::Duration;
use thiserror::Error;

/// Who a scheduled build is recorded as.
pub const WHO: &str = "scheduler";
/// Who a catch-up build (one for several missed slots) is recorded as.
pub const WHO_CATCH_UP: &str = "scheduler (catch-up)";
/// The `trigger` of scheduled builds.
pub const TRIGGER: &str = "schedule";

/// Missed slots counted at most (for the log line); more are reported as this many.
const MAX_COUNTED: u32 = 10_000;

/// What went wrong with a schedule.
#[derive(Debug, Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error("invalid cron `{cron}`: {reason}")]
    InvalidCron {
        /// The expression.
        cron: String,
        /// Why.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone `{0}`: use an IANA name such as `UTC` or `Europe/Berlin`")]
    UnknownTimezone(String),
    /// The expression matches no time after the given one.
    #[error("cron `{0}` never fires again")]
    NoNextRun(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parsed expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    text: String,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `cron` (5 fields, or 6 with seconds first) in the time zone `timezone`.
    pub fn parse(cron: &str, timezone: &str) -> Result<CronSchedule, ScheduleError> {
        let tz: Tz = timezone.trim().parse().map_err(|_| ScheduleError::UnknownTimezone(timezone.to_string()))?;
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::InvalidCron {
                cron: cron.to_string(),
                reason: format!(
                    "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {fields}"
                ),
            });
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let parsed = parser
            .parse(cron)
            .map_err(|e| ScheduleError::InvalidCron { cron: cron.to_string(), reason: e.to_string() })?;
        Ok(CronSchedule { cron: parsed, text: cron.to_string(), tz })
    }

    /// The first slot strictly after `after_ms` (ms since the epoch), in ms since the epoch.
    pub fn next_after(&self, after_ms: i64) -> Result<i64, ScheduleError> {
        let never = || ScheduleError::NoNextRun(self.text.clone());
        let start = DateTime::<Utc>::from_timestamp_millis(after_ms).ok_or_else(never)?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&start, false).map_err(|_| never())?;
        Ok(next.timestamp_millis())
    }

    /// How many slots fall in `from..=until` (at most [`MAX_COUNTED`]).
    pub fn slots_between(&self, from: i64, until: i64) -> u32 {
        let mut n = 0;
        let mut at = from - 1;
        while n < MAX_COUNTED {
            match self.next_after(at) {
                Ok(next) if next <= until => {
                    n += 1;
                    at = next;
                }
                _ => break,
            }
        }
        n
    }
}

/// Makes the job's pipeline schedules (`on.schedule`, 5 fields, UTC) exactly `crons`; called
/// when a build of the job's default branch is planned. Expressions that were there before keep
/// their next run; an expression that does not parse is skipped with a warning (the linter
/// already reports it). Returns how many pipeline schedules the job has now.
pub async fn sync_pipeline_schedules(store: &Store, job: &str, crons: &[String]) -> Result<usize, ScheduleError> {
    let now = now_ms();
    let mut entries = Vec::new();
    for cron in crons {
        let first = CronSchedule::parse(cron, "UTC").and_then(|c| c.next_after(now));
        match first {
            Ok(next) => entries.push((cron.trim().to_string(), next)),
            Err(e) => tracing::warn!(job, "pipeline schedule skipped: {e}"),
        }
    }
    Ok(store.replace_pipeline_schedules(job, &entries).await?.len())
}

/// Creates a server-side schedule (source `api`) after checking the expression and time zone.
pub async fn add_schedule(
    store: &Store,
    job: &str,
    cron: &str,
    timezone: Option<&str>,
    branch: Option<&str>,
) -> Result<ScheduleRecord, ScheduleError> {
    let timezone = timezone.map(str::trim).filter(|t| !t.is_empty()).unwrap_or("UTC");
    let cron = cron.trim();
    let next = CronSchedule::parse(cron, timezone)?.next_after(now_ms())?;
    let branch = branch.map(str::trim).filter(|b| !b.is_empty());
    let new = NewSchedule { job, source: SOURCE_API, cron, timezone, branch, next_run_ms: next };
    Ok(store.create_schedule(&new).await?)
}

/// What one pass of the scheduler did with a due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The schedule.
    pub schedule: i64,
    /// The build it started.
    pub build: i64,
    /// Slots missed since the one it was waiting for (1 when on time).
    pub slots: u32,
}

/// The scheduler: every second, fires the due schedules (see the module docs) until `stop`.
pub async fn run_scheduler(ctx: BuildContext, stop: CancelSignal) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = fire_due(&ctx, now_ms()).await {
            tracing::warn!("scheduler: {e}");
        }
    }
}

/// One pass: claims and fires every schedule due at `now` (ms). A schedule another server
/// claimed first is left alone.
pub async fn fire_due(ctx: &BuildContext, now: i64) -> Result<Vec<Fired>, ScheduleError> {
    let mut fired = Vec::new();
    for s in ctx.store.due_schedules(now).await? {
        let planned = CronSchedule::parse(&s.cron, &s.timezone)
            .and_then(|c| Ok((c.next_after(now)?, c.slots_between(s.next_run_ms, now))));
        let (next, slots) = match planned {
            Ok((next, slots)) => (next, slots.max(1)),
            Err(e) => {
                // Cannot happen for rows this server wrote; park the row instead of retrying
                // it every second.
                tracing::warn!(schedule = s.id, job = %s.job, "schedule disabled: {e}");
                ctx.store.claim_schedule(s.id, s.next_run_ms, i64::MAX, now).await?;
                continue;
            }
        };
        if !ctx.store.claim_schedule(s.id, s.next_run_ms, next, now).await? {
            tracing::debug!(schedule = s.id, "slot claimed by another server");
            continue;
        }
        let catch_up = slots > 1;
        if catch_up {
            tracing::info!(
                schedule = s.id,
                job = %s.job,
                cron = %s.cron,
                missed = slots,
                "schedule missed {slots} slots; running once to catch up"
            );
        }
        let req = TriggerRequest { branch: s.branch.clone(), ..TriggerRequest::default() };
        let who = if catch_up { WHO_CATCH_UP } else { WHO };
        match ctx.trigger(&s.job, req, TRIGGER, who).await {
            Ok(build) => {
                ctx.store.set_schedule_build(s.id, build.id).await?;
                let event = serde_json::json!({
                    "schedule": s.id,
                    "cron": s.cron,
                    "timezone": s.timezone,
                    "source": s.source,
                    "slot_ms": s.next_run_ms,
                    "catch_up": catch_up,
                    "missed_slots": slots,
                });
                ctx.store.add_event(build.id, "schedule", &event).await?;
                tracing::info!(schedule = s.id, job = %s.job, build = build.id, "scheduled build started");
                fired.push(Fired { schedule: s.id, build: build.id, slots });
            }
            Err(e) => tracing::warn!(schedule = s.id, job = %s.job, "scheduled build not started: {e}"),
        }
    }
    Ok(fired)
}

/// True for a schedule that comes from the pipeline file (the API does not delete those).
pub fn from_pipeline(s: &ScheduleRecord) -> bool {
    s.source == SOURCE_PIPELINE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewJob;
    use crate::store::testdb::stores;

    /// 2024-03-04T10:00:00Z, a Monday.
    const MONDAY_10: i64 = 1_709_546_400_000;

    #[test]
    fn five_fields_fire_on_the_minute_six_on_the_second() {
        let five = CronSchedule::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(five.next_after(MONDAY_10).unwrap(), MONDAY_10 + 15 * 60_000);
        assert_eq!(five.next_after(MONDAY_10 - 1).unwrap(), MONDAY_10);
        let six = CronSchedule::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(six.next_after(MONDAY_10).unwrap(), MONDAY_10 + 2_000);
        // Milliseconds into a slot still go to the next one.
        assert_eq!(six.next_after(MONDAY_10 + 500).unwrap(), MONDAY_10 + 2_000);
        assert_eq!(six.next_after(MONDAY_10 + 1_999).unwrap(), MONDAY_10 + 2_000);
        assert_eq!(six.slots_between(MONDAY_10, MONDAY_10 + 5_000), 3);
        assert_eq!(six.slots_between(MONDAY_10, MONDAY_10 + 1_000), 1);
    }

    #[test]
    fn time_zones_move_the_slot() {
        // 03:30 in Berlin is 02:30 UTC in winter (CET) and 01:30 UTC in summer (CEST).
        let berlin = CronSchedule::parse("30 3 * * *", "Europe/Berlin").unwrap();
        assert_eq!(berlin.next_after(MONDAY_10).unwrap(), MONDAY_10 + 16 * 3_600_000 + 30 * 60_000);
        let july_1 = 1_719_792_000_000; // 2024-07-01T00:00:00Z
        assert_eq!(berlin.next_after(july_1).unwrap(), july_1 + 3_600_000 + 30 * 60_000);
        let utc = CronSchedule::parse("30 3 * * *", "UTC").unwrap();
        assert_eq!(utc.next_after(MONDAY_10).unwrap(), MONDAY_10 + 17 * 3_600_000 + 30 * 60_000);
        // Weekdays only: from Friday evening the next run is Monday.
        let weekdays = CronSchedule::parse("0 9 * * 1-5", "UTC").unwrap();
        let friday_18 = MONDAY_10 + 4 * 86_400_000 + 8 * 3_600_000;
        assert_eq!(weekdays.next_after(friday_18).unwrap(), MONDAY_10 + 7 * 86_400_000 - 3_600_000);
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        for bad in ["", "* * * *", "61 * * * *", "* * * * * * *", "a b c d e"] {
            assert!(matches!(CronSchedule::parse(bad, "UTC"), Err(ScheduleError::InvalidCron { .. })), "{bad}");
        }
        assert!(matches!(CronSchedule::parse("* * * * *", "Mars/Olympus"), Err(ScheduleError::UnknownTimezone(_))));
    }

    #[tokio::test]
    async fn add_and_sync_validate_and_compute_next_runs() {
        for (store, _dir) in stores().await {
            let job = NewJob {
                name: "cron".into(),
                repo_url: "file:///nowhere".into(),
                default_branch: "main".into(),
                pipeline_path: None,
                submodules: false,
            };
            store.create_job(&job).await.unwrap();
            let before = now_ms();
            let s = add_schedule(&store, "cron", " */2 * * * * * ", None, Some("")).await.unwrap();
            assert_eq!((s.cron.as_str(), s.timezone.as_str(), s.branch.as_deref()), ("*/2 * * * * *", "UTC", None));
            assert!(s.next_run_ms > before && s.next_run_ms <= before + 2_000 + 1_000, "{s:?}");
            assert!(matches!(
                add_schedule(&store, "cron", "* * *", None, None).await,
                Err(ScheduleError::InvalidCron { .. })
            ));
            assert!(matches!(
                add_schedule(&store, "cron", "* * * * *", Some("Nowhere/City"), None).await,
                Err(ScheduleError::UnknownTimezone(_))
            ));
            assert!(matches!(
                add_schedule(&store, "missing", "* * * * *", None, None).await,
                Err(ScheduleError::Store(StoreError::NotFound(_)))
            ));
            let crons = vec!["0 3 * * *".to_string(), "not a cron".to_string()];
            assert_eq!(sync_pipeline_schedules(&store, "cron", &crons).await.unwrap(), 1);
            assert_eq!(store.schedules(Some("cron")).await.unwrap().len(), 2);
        }
    }
}

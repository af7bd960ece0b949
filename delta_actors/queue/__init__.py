"""The Postgres job queue: insert, claim, run, complete, promote.

Job states (River's), and who moves a job between them::

    insert ──► available ◄──── promote (promoter) ◄── scheduled / retryable
                  │  ▲
          claim   │  │ hand back (stopping worker; no attempt counted)
                  ▼  │
               running ──► completed | cancelled | discarded   (final)
                  │
                  ├──► retryable  (failed, attempts left: backoff with jitter)
                  └──► scheduled / available  (Requeue: snoozed, no attempt counted)

Invariants:
- A job is claimed by at most one worker at a time: claims take row locks with
  `FOR UPDATE SKIP LOCKED` and commit before the handler runs.
- Results are fenced: a completion applies only while the job is still running under the
  same attempt and actor, so a claim that was rescued or handed back meanwhile cannot
  overwrite a newer result.
- Postgres is authoritative for every state; a worker's memory only holds claims.
"""

//! Scale-out, who publishes: any number of ingests may run (a rolling deploy, a standby); the one
//! that holds the lease publishes, the others run their feeds and wait (docs/deployment.md,
//! "Leadership").
//!
//! The lease is the last message on `<prefix>.lease` in the stream (`wire::lease_subject`). Taking
//! it and renewing it are publishes with `Nats-Expected-Last-Subject-Sequence`: JetStream stores
//! one only if the subject's last message is still the one its sender read, so of two ingests that
//! read the same expired lease exactly one gets it, decided by the server (compare-and-set).
//!
//! The term is the stream sequence of the message that took the lease: NATS makes it strictly
//! increasing, and no clock goes into it. The leader's next message carries it (`"term"`), and only
//! after that is stored does the leader publish: edges learn a term from the lease alone, so a state
//! or heartbeat of a term the stored lease does not give is refused (`scaleout::edge`).
//!
//! Time: each ingest measures the lease with its own monotonic clock, never a timestamp from the
//! other. The leader counts `lease_ms` from when it *sent* its last renewal that was stored, and
//! stops publishing when that passes (a paused process, a partition); a standby counts `lease_ms`
//! from when it first *saw* that renewal, which is later. So the old leader has stopped before a
//! standby takes over, and whatever it had in flight carries its old term, which edges drop.

use std::time::Duration;

use tokio::time::Instant;

use crate::scaleout::wire::{self, LeaseRecord};

/// What a step of the lease changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: still leading, or still standing by.
    Same,
    /// This ingest took the lease: it leads under this term from now on.
    Won(u64),
    /// This ingest no longer leads, and why.
    Lost(String),
    /// This ingest renewed its lease after it had lapsed by its own clock (a pause, NATS slow) and
    /// nobody took it meanwhile: it leads again under the same term, and what it did not publish
    /// while the lease had lapsed must go out now.
    Resumed,
}

enum Held {
    /// Another ingest leads (or none does yet): the last lease message's stream sequence, and when
    /// this ingest first saw it.
    Standby { seen: Option<(u64, Instant)> },
    Leading {
        term: u64,
        /// The stream sequence of this leader's last lease message: the next renewal's expectation.
        last: u64,
        /// When the lease ends unless renewed (`lease_ms` after the last stored renewal was sent).
        until: Instant,
    },
}

pub struct Lease {
    js: async_nats::jetstream::Context,
    stream: String,
    subject: String,
    /// This process, for the record and the logs: a random id (NUID).
    holder: String,
    lease: Duration,
    /// Refused publishes (NATS permissions) make a leader step down and keep it from taking the
    /// lease back until this instant.
    benched_until: Option<Instant>,
    held: Held,
    /// The lease as last read by a standby: its holder and the term it announced.
    seen_record: Option<LeaseRecord>,
    /// A lease message was ever read (or written) by this ingest.
    seen_a_leader: bool,
}

impl Lease {
    pub fn new(
        js: async_nats::jetstream::Context,
        stream: &str,
        prefix: &str,
        lease: Duration,
    ) -> Lease {
        Lease {
            js,
            stream: stream.to_string(),
            subject: wire::lease_subject(prefix),
            holder: nuid::next().to_string(),
            lease,
            benched_until: None,
            held: Held::Standby { seen: None },
            seen_record: None,
            seen_a_leader: false,
        }
    }

    /// The leader this standby last read in the lease (holder, and term once announced).
    pub fn leader(&self) -> Option<&LeaseRecord> {
        self.seen_record.as_ref()
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The term to publish under, while the lease holds by this ingest's clock.
    pub fn leading(&self) -> Option<u64> {
        match self.held {
            Held::Leading { term, until, .. } if Instant::now() < until => Some(term),
            _ => None,
        }
    }

    /// When the next step is due: a leader renews three times a lease; a standby looks ten times
    /// a lease (at most every 250 ms), so that it takes over within `lease_ms` and two looks of the
    /// leader's death.
    pub fn next_step_in(&self) -> Duration {
        match self.held {
            Held::Leading { .. } => self.lease / 3,
            Held::Standby { .. } => {
                (self.lease / 10).clamp(Duration::from_millis(10), Duration::from_millis(250))
            }
        }
    }

    /// Renews the lease (leading) or takes it when it has expired (standing by).
    pub async fn step(&mut self) -> Step {
        match self.held {
            Held::Leading { term, last, until } => {
                let sent = Instant::now();
                let lapsed = sent >= until;
                let record = LeaseRecord {
                    holder: self.holder.clone(),
                    term: Some(term),
                    released: false,
                };
                match self.put(&record, last).await {
                    Ok(seq) => {
                        self.held = Held::Leading {
                            term,
                            last: seq,
                            until: sent + self.lease,
                        };
                        if lapsed {
                            Step::Resumed
                        } else {
                            Step::Same
                        }
                    }
                    Err(Put::Taken) => {
                        let now_last = self.last().await;
                        // Its own renewal, stored though its answer was given up on (`put`): it
                        // still leads, from that message.
                        if let Ok((seq, Some(r))) = &now_last {
                            if r.holder == self.holder && r.term == Some(term) && !r.released {
                                self.held = Held::Leading {
                                    term,
                                    last: *seq,
                                    until: sent + self.lease,
                                };
                                return Step::Same;
                            }
                        }
                        // No lease message at all: the stream started over (a memory stream on a
                        // restarted NATS, or purged whole). The leader, whose index holds the
                        // highest seqs, takes the new one at once; standbys wait a lease for it.
                        if matches!(now_last, Ok((0, _))) {
                            self.held = Held::Standby { seen: None };
                            match self.take(0).await {
                                Step::Won(term) => {
                                    tracing::warn!(term, "the scale-out lease was gone (the stream started over): took it again");
                                    return Step::Won(term);
                                }
                                _ => return self.stand_by(
                                    "another ingest took the lease of a stream that started over",
                                ),
                            }
                        }
                        self.stand_by("another ingest took the lease")
                    }
                    Err(Put::Failed(e)) if Instant::now() >= until => {
                        self.stand_by(&format!("the lease could not be renewed in time ({e})"))
                    }
                    Err(Put::Failed(e)) => {
                        tracing::warn!("renewing the scale-out lease failed, retrying: {e}");
                        Step::Same
                    }
                }
            }
            Held::Standby { seen } => {
                if self.benched_until.is_some_and(|t| Instant::now() < t) {
                    return Step::Same;
                }
                let (seq, record) = match self.last().await {
                    Ok(last) => last,
                    Err(e) => {
                        tracing::debug!("cannot read the scale-out lease: {e}");
                        return Step::Same;
                    }
                };
                let released = record.as_ref().is_some_and(|r| r.released);
                self.seen_record = record;
                self.seen_a_leader |= seq > 0;
                let now = Instant::now();
                let expired = match seen {
                    Some((s, at)) if s == seq => released || now.duration_since(at) >= self.lease,
                    _ => {
                        self.held = Held::Standby {
                            seen: Some((seq, now)),
                        };
                        // Its holder gave it up, or nobody ever held it as far as this ingest
                        // knows: no need to wait. An empty lease after a leader was seen is a
                        // stream that started over: its leader, still running, takes it at once
                        // (its index has the highest seqs); this standby waits a lease for it.
                        released || (seq == 0 && !self.seen_a_leader)
                    }
                };
                if expired {
                    self.take(seq).await
                } else {
                    Step::Same
                }
            }
        }
    }

    /// Stops leading at once and stays a standby for `bench`: NATS refused this ingest's
    /// publishes (permissions), so another ingest, or none, should lead.
    pub fn step_down(&mut self, why: &str, bench: Duration) -> Step {
        self.benched_until = Some(Instant::now() + bench);
        match self.held {
            Held::Leading { .. } => self.stand_by(why),
            Held::Standby { .. } => Step::Same,
        }
    }

    /// A leader shutting down gives the lease up, so that a standby takes over at its next look
    /// rather than after `lease_ms`.
    pub async fn release(&mut self) {
        if let Held::Leading { term, last, .. } = self.held {
            let record = LeaseRecord {
                holder: self.holder.clone(),
                term: Some(term),
                released: true,
            };
            match self.put(&record, last).await {
                Ok(_) => tracing::info!(term, "released the scale-out lease"),
                Err(e) => tracing::warn!(term, "could not release the scale-out lease: {e:?}"),
            }
            self.held = Held::Standby { seen: None };
        }
    }

    async fn take(&mut self, expected: u64) -> Step {
        let sent = Instant::now();
        let mut record = LeaseRecord {
            holder: self.holder.clone(),
            term: None,
            released: false,
        };
        let term = match self.put(&record, expected).await {
            Ok(seq) => seq,
            Err(Put::Taken) => {
                // Another standby was first: watch its lease from now.
                self.held = Held::Standby { seen: None };
                return Step::Same;
            }
            Err(Put::Failed(e)) => {
                tracing::warn!("taking the scale-out lease failed: {e}");
                return Step::Same;
            }
        };
        // The term is known only now; announce it before publishing anything under it.
        record.term = Some(term);
        match self.put(&record, term).await {
            Ok(last) => {
                self.held = Held::Leading {
                    term,
                    last,
                    until: sent + self.lease,
                };
                Step::Won(term)
            }
            Err(Put::Taken) => {
                self.held = Held::Standby { seen: None };
                Step::Same
            }
            Err(Put::Failed(e)) => {
                // Taken but not announced: nobody publishes under it, and a standby (this one
                // too) takes the lease once it expires.
                tracing::warn!(term, "announcing the scale-out term failed: {e}");
                self.held = Held::Standby { seen: None };
                Step::Same
            }
        }
    }

    fn stand_by(&mut self, why: &str) -> Step {
        self.held = Held::Standby { seen: None };
        Step::Lost(why.to_string())
    }

    /// The lease subject's last message: its stream sequence (0 when there is none) and what it
    /// says.
    async fn last(&self) -> Result<(u64, Option<LeaseRecord>), String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(m) => Ok((m.sequence, wire::decode_lease(&m.payload).ok())),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((0, None)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stores `record` if the lease subject's last message is still `expected` (0: none).
    /// Writes the lease if the subject's last message is `expected`, within a quarter lease: a
    /// request in flight when NATS went away waits for JetStream's own timeout (5 s), past the
    /// lease, and a leader stuck in it let a standby take over a restarted stream it should have
    /// retaken at once (seen in `a_nats_restart_keeps_the_running_leader_and_costs_no_client_a_seq`
    /// under load). Timed out, the next step tries again.
    async fn put(&self, record: &LeaseRecord, expected: u64) -> Result<u64, Put> {
        let within = (self.lease / 4).max(Duration::from_millis(50));
        match tokio::time::timeout(within, self.put_now(record, expected)).await {
            Ok(done) => done,
            Err(_) => Err(Put::Failed(format!(
                "JetStream did not answer within {} ms",
                within.as_millis()
            ))),
        }
    }

    async fn put_now(&self, record: &LeaseRecord, expected: u64) -> Result<u64, Put> {
        use async_nats::jetstream::context::PublishErrorKind;
        use async_nats::jetstream::message::PublishMessage as Publish;
        let publish = Publish::build()
            .payload(wire::encode_lease(record).into())
            .expected_last_subject_sequence(expected);
        let taken = |e: &async_nats::jetstream::context::PublishError| {
            e.kind() == PublishErrorKind::WrongLastSequence
        };
        let ack = self
            .js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| {
                if taken(&e) {
                    Put::Taken
                } else {
                    Put::Failed(e.to_string())
                }
            })?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if taken(&e) => Err(Put::Taken),
            Err(e) => Err(Put::Failed(e.to_string())),
        }
    }
}

#[derive(Debug)]
enum Put {
    /// The subject's last message is not the one expected: another ingest wrote the lease.
    Taken,
    Failed(String),
}

//! Wires one process together: metrics, dead letters, sinks and their runners, the
//! router, the HTTP listener and the source; then runs until shutdown and drains.
//!
//! Shutdown order: the source stops reading; entry queues close; each runner drains its
//! queue and settles its in-flight batches (a rate-limit gate then closes the queues it
//! feeds); dead letters are flushed; the Streams source acknowledges the last entries;
//! spools are closed (past the deadline, what is only in memory is first moved to the
//! spools); the HTTP listener stops last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, OnLimit, SourceKind};
use crate::deadletter;
use crate::pipeline::queue::{self, SinkQueue};
use crate::pipeline::router::{PipelineEntry, Router};
use crate::pipeline::runner::{Forward, SinkRunner};
use crate::redis_client;
use crate::sinks::leaderboard::LeaderboardReader;
use crate::sinks::rate_counter::RateReader;
use crate::sinks::{Sink, SinkContext};
use crate::sources::pubsub::PubSubSource;
use crate::sources::streams::StreamsSource;
use crate::telemetry::http::{self, Readiness};
use crate::telemetry::metrics::{self, SinkMetrics};

/// After the shutdown deadline, how long runners get to hand unwritten batches to the spool.
const EVACUATION_GRACE: Duration = Duration::from_secs(3);

/// A configured process, not yet started.
pub struct App {
    config: Config,
    /// Sinks supplied by the embedding program (tests), by `(pipeline, sink)`; they replace
    /// the configured kind but keep its batching, queue and retry settings.
    sink_overrides: HashMap<(String, String), Arc<dyn Sink>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Everything read was written or dead-lettered.
    Drained,
    /// The shutdown deadline passed with work left.
    DeadlineExceeded,
}

/// A running process: where it listens, and how to wait for it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<RunOutcome>>,
}

impl App {
    pub fn new(config: Config) -> App {
        App {
            config,
            sink_overrides: HashMap::new(),
        }
    }

    /// Replaces the sink `pipeline.sink` of the configuration with `sink`.
    pub fn with_sink(mut self, pipeline: &str, sink: &str, replacement: Arc<dyn Sink>) -> App {
        self.sink_overrides
            .insert((pipeline.to_string(), sink.to_string()), replacement);
        self
    }

    /// Connects everything and starts; returns once the HTTP listener is bound and the
    /// sinks are connected (the source subscribes in the background).
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let config = self.config;
        let prometheus = metrics::install();
        let redis = redis_client::connection_manager(&config.redis).await?;
        let (dead_letters, dead_letter_task) = deadletter::spawn_writer(
            redis.clone(),
            config.dead_letter.stream.clone(),
            config.dead_letter.max_len,
        );

        let mut router = Router::new();
        let mut runners = Vec::new();
        let mut all_sinks: Vec<(String, Arc<dyn Sink>)> = Vec::new();
        let mut all_queues: Vec<Arc<SinkQueue>> = Vec::new();
        for (pipeline_name, pipeline) in &config.pipelines {
            let mut queues: Vec<(String, Arc<SinkQueue>, bool)> = Vec::new();
            let mut built: Vec<(String, Arc<dyn Sink>)> = Vec::new();
            for (sink_name, sink_config) in &pipeline.sinks {
                let context = SinkContext {
                    pipeline: pipeline_name.clone(),
                    sink: sink_name.clone(),
                    on_limit: pipeline.on_limit,
                    redis: redis.clone(),
                };
                let key = (pipeline_name.clone(), sink_name.clone());
                let sink = match self.sink_overrides.get(&key) {
                    Some(sink) => Arc::clone(sink),
                    None => sink_config.build(&context).await.with_context(|| {
                        format!(
                            "pipelines.{pipeline_name}.sinks.{sink_name}: cannot start the {} sink",
                            sink_config.kind()
                        )
                    })?,
                };
                let sink_metrics = SinkMetrics::new(pipeline_name, sink_name, sink_config.kind());
                let queue = SinkQueue::open(
                    &sink_config.queue,
                    &config.spool,
                    pipeline_name,
                    sink_name,
                    sink_metrics,
                )
                .await
                .with_context(|| format!("pipelines.{pipeline_name}.sinks.{sink_name}.queue"))?;
                all_queues.push(Arc::clone(&queue));
                queues.push((sink_name.clone(), queue, sink_config.is_rate_counter()));
                built.push((sink_name.clone(), Arc::clone(&sink)));
                all_sinks.push((format!("{pipeline_name}.{sink_name}"), sink));
            }
            // With on_limit drop/tag the rate counter decides first, then forwards.
            let gate = if pipeline.on_limit == OnLimit::Count {
                None
            } else {
                queues
                    .iter()
                    .position(|(_, _, is_rate_counter)| *is_rate_counter)
            };
            let downstream: Vec<Arc<SinkQueue>> = queues
                .iter()
                .enumerate()
                .filter(|(index, _)| Some(*index) != gate)
                .map(|(_, (_, queue, _))| Arc::clone(queue))
                .collect();
            let entry_queues = match gate {
                Some(gate_index) => vec![Arc::clone(&queues[gate_index].1)],
                None => queues
                    .iter()
                    .map(|(_, queue, _)| Arc::clone(queue))
                    .collect(),
            };
            for (index, ((sink_name, queue, _), (_, sink))) in queues.iter().zip(built).enumerate()
            {
                let sink_config = &pipeline.sinks[sink_name];
                let forward = (Some(index) == gate).then(|| Forward {
                    on_limit: pipeline.on_limit,
                    downstream: downstream.clone(),
                });
                runners.push(SinkRunner {
                    sink,
                    queue: Arc::clone(queue),
                    batch: sink_config.batch.clone(),
                    retry: sink_config.retry.clone(),
                    max_in_flight: sink_config.max_in_flight,
                    metrics: SinkMetrics::new(pipeline_name, sink_name, sink_config.kind()),
                    dead_letters: dead_letters.clone(),
                    forward,
                });
            }
            // Stream keys route like channels: an event's channel is its stream key.
            let channels = match config.source.kind {
                SourceKind::Pubsub => &pipeline.channels,
                SourceKind::Streams => &pipeline.streams,
            };
            router.add_pipeline(
                PipelineEntry {
                    name: pipeline_name.clone(),
                    entry_queues,
                },
                channels,
                &pipeline.patterns,
            );
        }
        let router = Arc::new(router);
        let readiness = Readiness::new(all_sinks);

        let http_shutdown = CancellationToken::new();
        let listen: SocketAddr = config.http.listen.parse().context("http.listen")?;
        let (leaderboards, rates) = if config.http.aggregates_api {
            (
                LeaderboardReader::from_config(&config, redis.clone()).map(Arc::new),
                RateReader::from_config(&config, redis.clone()).map(Arc::new),
            )
        } else {
            (None, None)
        };
        let _upkeep = metrics::spawn_upkeep(prometheus.clone(), http_shutdown.clone());
        let (http_addr, http_task) = http::serve(
            listen,
            prometheus,
            Arc::clone(&readiness),
            leaderboards,
            rates,
            http_shutdown.clone(),
        )
        .await?;
        tracing::info!(%http_addr, pipelines = config.pipelines.len(), "ingestd started");

        let mut runner_tasks = JoinSet::new();
        for runner in runners {
            runner_tasks.spawn(runner.run());
        }
        let source_shutdown = shutdown.clone();
        // The Streams source acknowledges entries after the pipelines drain: its ack loop
        // is awaited last.
        let (source_task, mut acker) = match config.source.kind {
            SourceKind::Pubsub => {
                let source = PubSubSource {
                    redis: config.redis.clone(),
                    source: config.source.clone(),
                    router: Arc::clone(&router),
                    dead_letters: dead_letters.clone(),
                    readiness,
                };
                let task = tokio::spawn(async move { source.run(source_shutdown).await });
                (task, None)
            }
            SourceKind::Streams => {
                let source = StreamsSource {
                    redis: config.redis.clone(),
                    commands: redis.clone(),
                    source: config.source.clone(),
                    router: Arc::clone(&router),
                    dead_letters: dead_letters.clone(),
                    readiness,
                };
                let tasks = source.spawn(source_shutdown);
                (tasks.reader, Some(tasks.acker))
            }
        };
        let deadline = config.shutdown.deadline;

        let task = tokio::spawn(async move {
            let source_result = match source_task.await {
                Ok(result) => result,
                Err(error) => Err(anyhow::anyhow!("source task failed: {error}")),
            };
            if let Err(error) = &source_result {
                tracing::error!(error = %error, "source stopped");
            }
            tracing::info!(?deadline, "stopping: draining queues");
            for queue in router.entry_queues() {
                queue.close();
            }
            drop(router);
            let drained = tokio::time::timeout(deadline, async {
                while runner_tasks.join_next().await.is_some() {}
                drop(dead_letters);
                let _ = dead_letter_task.await;
                // Every event is written or dead-lettered: the last acknowledgements go out.
                if let Some(acker) = &mut acker {
                    acker.finish().await;
                }
            })
            .await;
            // Past the deadline: what is only in memory goes to the spools, and runners
            // get a moment to hand back the batches they are retrying.
            if drained.is_err() && queue::evacuate_all(&all_queues).await {
                let _ = tokio::time::timeout(EVACUATION_GRACE, async {
                    while runner_tasks.join_next().await.is_some() {}
                })
                .await;
            }
            queue::close_spools(&all_queues).await;
            // Past the deadline the Streams source acknowledges what is settled (spooled
            // events included); the rest stays pending and is read again at the next start.
            if drained.is_err()
                && let Some(acker) = acker
            {
                acker.abandon().await;
            }
            http_shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
            source_result?;
            match drained {
                Ok(()) => {
                    tracing::info!("stopped: every queue drained");
                    Ok(RunOutcome::Drained)
                }
                Err(_) => {
                    tracing::error!(
                        ?deadline,
                        "stopped: shutdown deadline passed with events still queued"
                    );
                    Ok(RunOutcome::DeadlineExceeded)
                }
            }
        });
        Ok(Running { http_addr, task })
    }
}

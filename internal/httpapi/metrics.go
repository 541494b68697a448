package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flotaio/flota/internal/fleet"
)

// scrapeTimeout bounds the store and engine reads of one scrape.
const scrapeTimeout = 10 * time.Second

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// Metric descriptions. Counters come from the components' own counters,
// read on every scrape; nothing on the data path is touched.
var (
	descBuild        = desc("flota_build_info", "Version of the orchestrator.", "version")
	descDevices      = desc("flota_devices_registered", "Devices known to the orchestrator.")
	descConnected    = desc("flota_devices_connected", "Registered devices with a live MQTT connection.")
	descUpdates      = desc("flota_updates", "Updates by state.", "state")
	descUpdateDevs   = desc("flota_update_devices", "Devices of an active (scheduled, running or paused) update by state.", "update", "state")
	descUpdateFlight = desc("flota_update_devices_in_flight", "Devices of an active update holding a transfer slot.", "update")

	descChunks      = desc("flota_transfer_chunks_sent_total", "Firmware chunks published to devices, resends included.")
	descBytes       = desc("flota_transfer_sent_bytes_total", "Firmware payload bytes published to devices, resends included.")
	descResends     = desc("flota_transfer_resent_chunks_total", "Chunks sent again within an attempt: after a gap, an ack timeout or a re-offer.")
	descAcks        = desc("flota_transfer_acks_total", "Chunk acknowledgements received from devices.")
	descBadMsgs     = desc("flota_device_messages_bad_total", "Device messages that could not be decoded or were invalid.")
	descStaleMsgs   = desc("flota_device_messages_stale_total", "Valid device messages for another update, handle, attempt or connection.")
	descQueueDrops  = desc("flota_device_messages_dropped_total", "Device messages dropped before the engine: reason queue_full (its queue was full), device_quota (that device had its quota of messages waiting).", "reason")
	descIllegal     = desc("flota_device_illegal_transitions_total", "Device state changes refused by the state machine.")
	descBeyondSent  = desc("flota_transfer_acks_beyond_sent_total", "Acks refused because they acknowledge bytes never sent.")
	descStoreTx     = desc("flota_store_transactions_total", "Write transactions committed by the store.")
	descStoreRows   = desc("flota_store_writes_total", "Write operations committed by the store.")
	descStoreDrop   = desc("flota_store_writes_dropped_total", "Write operations that failed and were dropped.")
	descStoreFail   = desc("flota_store_write_failures_total", "Store transactions that failed on a disk fault and were retried.")
	descStoreHeld   = desc("flota_store_held_writes", "Writes the store holds because it cannot write now (0 while it writes).")
	descStoreLast   = desc("flota_store_last_batch_writes", "Write operations in the last committed transaction.")
	descStoreBatch  = desc("flota_store_batch_writes", "Write operations per committed transaction.")
	descStoreCommit = desc("flota_store_commit_duration_seconds", "Time to execute and commit one write transaction.")

	descBrokerClients = desc("flota_broker_clients", "MQTT connections with an established session (devices and monitors).")
	descBrokerDropped = desc("flota_broker_messages_dropped_total", "MQTT deliveries the broker dropped on a full client queue.")
	descBrokerAuth    = desc("flota_broker_auth_refused_total", "MQTT connections refused.")
	descBrokerACL     = desc("flota_broker_acl_denied_total", "MQTT publishes, subscriptions and deliveries denied by the ACL.")
	descBrokerRate    = desc("flota_broker_rate_limited_total", "MQTT publishes dropped by the per-client rate limit.")
	descBrokerConnRL  = desc("flota_broker_connect_rate_limited_total", "MQTT connections refused because their client ID connected too often.")
	descBrokerIDs     = desc("flota_broker_identities", "MQTT client IDs whose rate and reconnect limits the broker keeps.")

	descBrokerTopic   = desc("flota_broker_topic_refused_total", "MQTT publishes, wills and (un)subscribe filters refused for their topic length or depth.")
	descBrokerRetain  = desc("flota_broker_retain_refused_total", "MQTT client publishes and wills delivered without their retain flag.")
	descBrokerSlowMon = desc("flota_broker_slow_monitors_total", "QoS 1 monitors disconnected because they did not take their events in time.")
	descBrokerSubs    = desc("flota_broker_subscriptions_refused_total", "MQTT subscribe filters refused over a client's subscription quota.")
	descBrokerSubRate = desc("flota_broker_subscribe_rate_limited_total", "MQTT SUBSCRIBE packets refused over a connection's SUBSCRIBE rate.")

	// Connection limits (broker.Options; docs/SECURITY.md).
	descBrokerConns       = desc("flota_broker_connections", "Open MQTT connections, unauthenticated ones included.")
	descBrokerUnauth      = desc("flota_broker_connections_unauthenticated", "MQTT connections that have not authenticated yet.")
	descBrokerConnRefused = desc("flota_broker_connections_refused_total", "MQTT connections closed at accept: the connection limit was reached.")
	descBrokerUnauthRef   = desc("flota_broker_unauthenticated_refused_total", "MQTT connections closed at accept: the limit of unauthenticated connections was reached.")
	descBrokerUnauthIPRef = desc("flota_broker_unauthenticated_ip_refused_total", "MQTT connections closed at accept: their address's limit of unauthenticated connections was reached.")
	descBrokerConnTimeout = desc("flota_broker_connect_timeouts_total", "MQTT connections closed for sending no complete CONNECT in time.")
	descBrokerConnLarge   = desc("flota_broker_connect_too_large_total", "MQTT connections closed for a CONNECT over the size limit.")
	descBrokerAcceptErrs  = desc("flota_broker_accept_errors_total", "Failed accepts of MQTT connections (e.g. out of file descriptors), retried.")

	descStreamClients = desc("flota_http_stream_clients", "Connected event stream (SSE) clients.")
	descStreamDropped = desc("flota_http_stream_dropped_messages_total", "Messages dropped for slow event stream clients (they catch up from the store).")
	descTimelineRef   = desc("flota_http_timeline_refused_total", "Update timeline requests refused with 503: as many event log replays were running as allowed.")
	descSelectorRef   = desc("flota_http_selector_refused_total", "Updates refused with 400 selector_too_large: a selector over the store's limits (fleet.MaxSelector*).")

	descIllegalSuppressed = desc("flota_device_illegal_events_suppressed_total", "Refused device state changes counted but not recorded as events (--illegal-event-interval).")
	descEngineLogDropped  = desc("flota_engine_log_lines_suppressed_total", "Engine log lines about a device dropped by the per-client log limit.")
	descBrokerLogDropped  = desc("flota_broker_log_lines_suppressed_total", "Broker log lines about a client dropped by the per-client log limit.")
)

// brokerMetrics maps the JSON names of BrokerStats to metrics.
var brokerMetrics = []struct {
	key  string
	desc *prometheus.Desc
	typ  prometheus.ValueType
}{
	{"clients", descBrokerClients, prometheus.GaugeValue},
	{"messages_dropped", descBrokerDropped, prometheus.CounterValue},
	{"auth_refused", descBrokerAuth, prometheus.CounterValue},
	{"acl_denied", descBrokerACL, prometheus.CounterValue},
	{"rate_limited", descBrokerRate, prometheus.CounterValue},
	{"connect_rate_limited", descBrokerConnRL, prometheus.CounterValue},
	{"identities", descBrokerIDs, prometheus.GaugeValue},
	{"topic_refused", descBrokerTopic, prometheus.CounterValue},
	{"retain_refused", descBrokerRetain, prometheus.CounterValue},
	{"slow_monitors", descBrokerSlowMon, prometheus.CounterValue},
	{"subscriptions_refused", descBrokerSubs, prometheus.CounterValue},
	{"subscribe_rate_limited", descBrokerSubRate, prometheus.CounterValue},
	{"connections", descBrokerConns, prometheus.GaugeValue},
	{"unauthenticated", descBrokerUnauth, prometheus.GaugeValue},
	{"conn_refused", descBrokerConnRefused, prometheus.CounterValue},
	{"unauth_refused", descBrokerUnauthRef, prometheus.CounterValue},
	{"unauth_ip_refused", descBrokerUnauthIPRef, prometheus.CounterValue},
	{"connect_timeouts", descBrokerConnTimeout, prometheus.CounterValue},
	{"connect_too_large", descBrokerConnLarge, prometheus.CounterValue},
	{"accept_errors", descBrokerAcceptErrs, prometheus.CounterValue},
	{"log_lines_suppressed", descBrokerLogDropped, prometheus.CounterValue},
}

// collector reads the server's components on every scrape.
type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descDevices, descConnected, descUpdates, descUpdateDevs,
		descUpdateFlight, descChunks, descBytes, descResends, descAcks, descBadMsgs, descStaleMsgs, descQueueDrops,
		descIllegal, descBeyondSent, descIllegalSuppressed, descEngineLogDropped, descStoreTx, descStoreRows, descStoreDrop, descStoreFail, descStoreHeld, descStoreLast, descStoreBatch, descStoreCommit,
		descStreamClients, descStreamDropped, descTimelineRef, descSelectorRef, descPayloadBuilds} {
		ch <- d
	}
	for _, m := range brokerMetrics {
		ch <- m.desc
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	put := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	put(descBuild, prometheus.GaugeValue, 1, s.version())
	if s.Store == nil {
		return
	}

	if fs, err := s.Store.FleetSummary(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(descDevices, err)
	} else {
		put(descDevices, prometheus.GaugeValue, float64(fs.Total))
		put(descConnected, prometheus.GaugeValue, float64(fs.Online))
	}

	st := s.Store.Stats()
	put(descStoreTx, prometheus.CounterValue, float64(st.Transactions))
	put(descStoreRows, prometheus.CounterValue, float64(st.Rows))
	put(descStoreDrop, prometheus.CounterValue, float64(st.Dropped))
	put(descStoreFail, prometheus.CounterValue, float64(st.WriteFailures))
	put(descStoreHeld, prometheus.GaugeValue, float64(st.HeldWrites))
	put(descStoreLast, prometheus.GaugeValue, float64(st.LastBatch))
	ch <- prometheus.MustNewConstSummary(descStoreBatch, uint64(st.Transactions), float64(st.Rows), nil)
	ch <- prometheus.MustNewConstSummary(descStoreCommit, uint64(st.Transactions), st.CommitSeconds, nil)

	c.collectUpdates(ctx, ch, put)

	if s.Engine != nil {
		es := s.Engine.Stats()
		put(descChunks, prometheus.CounterValue, float64(es.ChunksSent))
		put(descBytes, prometheus.CounterValue, float64(es.BytesSent))
		put(descResends, prometheus.CounterValue, float64(es.Resends))
		put(descAcks, prometheus.CounterValue, float64(es.Acks))
		put(descBadMsgs, prometheus.CounterValue, float64(es.BadMessages))
		put(descStaleMsgs, prometheus.CounterValue, float64(es.StaleMessages))
		put(descQueueDrops, prometheus.CounterValue, float64(es.QueueDrops), "queue_full")
		put(descQueueDrops, prometheus.CounterValue, float64(es.QuotaDrops), "device_quota")
		put(descIllegal, prometheus.CounterValue, float64(es.IllegalChanges))
		put(descBeyondSent, prometheus.CounterValue, float64(es.AcksBeyondSent))
		put(descIllegalSuppressed, prometheus.CounterValue, float64(es.IllegalEventsSuppressed))
		put(descEngineLogDropped, prometheus.CounterValue, float64(es.LogLinesSuppressed))
		putPayloadBuilds(put, es)
	}

	if s.BrokerStats != nil {
		if vals, err := numbers(s.BrokerStats()); err != nil {
			ch <- prometheus.NewInvalidMetric(descBrokerClients, err)
		} else {
			for _, m := range brokerMetrics {
				if v, ok := vals[m.key]; ok {
					put(m.desc, m.typ, v)
				}
			}
		}
	}

	put(descStreamClients, prometheus.GaugeValue, float64(s.hub.count()))
	put(descStreamDropped, prometheus.CounterValue, float64(s.hub.dropped.Load()))
	put(descTimelineRef, prometheus.CounterValue, float64(s.replays.refused.Load()))
	put(descSelectorRef, prometheus.CounterValue, float64(s.selectorRefused.Load()))
}

// collectUpdates counts updates by state and, for the active ones, their
// devices by state.
func (c collector) collectUpdates(ctx context.Context, ch chan<- prometheus.Metric, put func(*prometheus.Desc, prometheus.ValueType, float64, ...string)) {
	s := c.s
	ups, err := s.Store.ListUpdates(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descUpdates, err)
		return
	}
	byState := map[fleet.UpdateState]int{}
	for _, st := range fleet.UpdateStates {
		byState[st] = 0
	}
	for _, u := range ups {
		byState[u.State]++
	}
	for st, n := range byState {
		put(descUpdates, prometheus.GaugeValue, float64(n), string(st))
	}
	if s.Engine == nil {
		return
	}
	for _, u := range ups {
		if u.State.Terminal() {
			continue
		}
		sum, err := s.Engine.Summary(ctx, u.ID)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(descUpdateDevs, err)
			continue
		}
		for _, st := range fleet.AllDeviceStates {
			put(descUpdateDevs, prometheus.GaugeValue, float64(sum.Counts[st]), u.ID, string(st))
		}
		put(descUpdateFlight, prometheus.GaugeValue, float64(sum.InFlight), u.ID)
	}
}

// numbers returns the numeric fields of v's JSON object.
func numbers(v any) (map[string]float64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(raw))
	for k, x := range raw {
		if f, ok := x.(float64); ok {
			out[k] = f
		}
	}
	return out, nil
}

// newMetrics returns the /metrics handler over a registry of the server's
// own (not the global one): flota's collector, the Go runtime and the
// process.
func (s *Server) newMetrics() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s: s}, opsCollector{s: s}, s.requests, s.fetches.refused,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

func (s *Server) metricsHandler() http.Handler { return s.metrics }

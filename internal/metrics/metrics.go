// Package metrics holds popgate's Prometheus metrics: one Registry per
// process, served in the Prometheus text format by the admin server
// (GET /metrics). No metric has a per-user label: label values come from
// small fixed sets (end reasons, results, backend names, operations), so the
// number of series does not grow with the number of users.
//
// Every method is safe on a nil *Metrics (it does nothing), so code paths
// without metrics need no checks.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "popgate"

// Login results (label "result" of popgate_logins_total).
const (
	LoginOK        = "ok"          // TRANSACTION state reached
	LoginAuth      = "auth"        // wrong credentials or no route (-ERR [AUTH])
	LoginInUse     = "in_use"      // maildrop locked by another session (-ERR [IN-USE])
	LoginThrottled = "throttled"   // ended during its failure delay, credentials unchecked (-ERR [SYS/TEMP])
	LoginError     = "error"       // upstream, lock or login state store, or snapshot failure (-ERR [SYS/TEMP])
	LoginTooEarly  = "login_delay" // refused: RFC 2449 LOGIN-DELAY not yet elapsed (-ERR [LOGIN-DELAY])
)

// Operations of popgate_upstream_call_duration_seconds.
const (
	OpLogin    = "login"
	OpSnapshot = "snapshot"
	OpOpen     = "open"
	OpCommit   = "commit"
	OpClose    = "close"
)

// Metrics is the set of popgate's metrics, registered in Registry.
type Metrics struct {
	Registry *prometheus.Registry

	sessionsOpen   prometheus.Gauge
	sessionsEnded  *prometheus.CounterVec
	logins         *prometheus.CounterVec
	commits        *prometheus.CounterVec
	deleted        prometheus.Counter
	octets         prometheus.Counter
	upstream       *prometheus.HistogramVec
	lockWait       prometheus.Histogram
	lockConflicts  prometheus.Counter
	lockLost       prometheus.Counter
	throttled      *prometheus.CounterVec
	tokenRefreshes *prometheus.CounterVec
	proxyRefused   *prometheus.CounterVec
	snapshotCache  *prometheus.CounterVec
	buildInfo      *prometheus.GaugeVec
	redisUp        prometheus.Gauge
	readyGauge     prometheus.Gauge
}

// Build describes the running binary (popgate_build_info labels).
type Build struct {
	Version, Commit, GoVersion string
}

// New returns the metrics, registered in a new Registry together with the
// Go runtime and process collectors.
func New(b Build) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{Registry: reg}
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m.sessionsOpen = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "sessions_open",
		Help: "POP3 connections open now."})
	m.sessionsEnded = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "sessions_ended_total",
		Help: "POP3 sessions ended, by the end reason of their session end log line."}, []string{"end"})
	m.logins = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "logins_total",
		Help: "Login attempts by result: ok, auth, in_use, throttled, login_delay, error."}, []string{"result"})
	m.commits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "commits_total",
		Help: "UPDATE-state commits (QUIT with deleted messages), by result: ok, failed, not_confirmed (the maildrop lock could not be confirmed)."}, []string{"result"})
	m.deleted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "deleted_messages_total",
		Help: "Messages removed upstream by successful commits."})
	m.octets = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "sent_octets_total",
		Help: "Octets sent to POP3 clients."})
	m.upstream = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "upstream_call_duration_seconds",
		Help:    "Duration of calls to the upstream store, by backend name and operation (login, snapshot, open, commit, close).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"backend", "operation"})
	m.lockWait = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "lock_wait_seconds",
		Help:    "Time taken to take (or be refused) the maildrop lock.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}})
	m.lockConflicts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "lock_conflicts_total",
		Help: "Logins refused because another session holds the maildrop (-ERR [IN-USE])."})
	m.lockLost = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "lock_confirm_failures_total",
		Help: "Commits not done because the maildrop lock could not be confirmed (lease lost or Redis unreachable)."})
	m.throttled = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "throttled_logins_total",
		Help: "Logins delayed by the failure penalty (reason auth_failures) or refused by LOGIN-DELAY (reason login_delay)."}, []string{"reason"})
	m.tokenRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "token_refreshes_total",
		Help: "OAuth token refreshes by result: ok, failed."}, []string{"result"})
	m.proxyRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "proxy_protocol_refused_total",
		Help: "Connections refused on PROXY-protocol listeners, by reason: untrusted (source not in trusted), missing (no header), invalid (bad header)."}, []string{"reason"})
	m.snapshotCache = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "snapshot_cache_total",
		Help: "Logins whose message list came from the snapshot cache (hit) or was fetched (miss)."}, []string{"result"})
	m.buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the labels name the running build."}, []string{"version", "commit", "goversion"})
	m.redisUp = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "redis_up",
		Help: "1 when the last Redis health check succeeded (only with cluster configured)."})
	m.readyGauge = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "ready",
		Help: "1 while /readyz answers 200."})
	for _, c := range []prometheus.Collector{m.sessionsOpen, m.sessionsEnded, m.logins, m.commits, m.deleted, m.octets,
		m.upstream, m.lockWait, m.lockConflicts, m.lockLost, m.throttled, m.tokenRefreshes, m.proxyRefused,
		m.snapshotCache, m.buildInfo, m.readyGauge,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	m.buildInfo.WithLabelValues(b.Version, b.Commit, b.GoVersion).Set(1)
	for _, r := range []string{LoginOK, LoginAuth, LoginInUse, LoginThrottled, LoginTooEarly, LoginError} {
		m.logins.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed", "not_confirmed"} {
		m.commits.WithLabelValues(r)
	}
	for _, r := range []string{"hit", "miss"} {
		m.snapshotCache.WithLabelValues(r)
	}
	for _, r := range []string{"auth_failures", "login_delay"} {
		m.throttled.WithLabelValues(r)
	}
	return m
}

// EnableRedis registers popgate_redis_up (only processes with a cluster
// section export it).
func (m *Metrics) EnableRedis() {
	if m == nil {
		return
	}
	m.Registry.MustRegister(m.redisUp)
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// SessionStarted counts an accepted connection.
func (m *Metrics) SessionStarted() {
	if m == nil {
		return
	}
	m.sessionsOpen.Inc()
}

// SessionEnded counts a connection's end with its end reason (quit, drop,
// timeout, shutdown, error, commit_failed, …) and the octets it sent.
func (m *Metrics) SessionEnded(end string, octets int64) {
	if m == nil {
		return
	}
	m.sessionsOpen.Dec()
	m.sessionsEnded.WithLabelValues(end).Inc()
	m.octets.Add(float64(octets))
}

// Login counts a login attempt by result (LoginOK, LoginAuth, …).
func (m *Metrics) Login(result string) {
	if m == nil {
		return
	}
	m.logins.WithLabelValues(result).Inc()
}

// LockTaken observes the time a lock attempt took; conflict is true when
// the maildrop was held by another session.
func (m *Metrics) LockTaken(wait time.Duration, conflict bool) {
	if m == nil {
		return
	}
	m.lockWait.Observe(wait.Seconds())
	if conflict {
		m.lockConflicts.Inc()
	}
}

// Commit counts a commit: result "ok" (deleted messages removed), "failed"
// (the store refused), or "not_confirmed" (the lock could not be confirmed,
// nothing sent upstream).
func (m *Metrics) Commit(result string, deleted int) {
	if m == nil {
		return
	}
	m.commits.WithLabelValues(result).Inc()
	if result == "not_confirmed" {
		m.lockLost.Inc()
	}
	if result == "ok" {
		m.deleted.Add(float64(deleted))
	}
}

// Throttled counts a login delayed by the failure penalty
// ("auth_failures") or refused by LOGIN-DELAY ("login_delay"): the
// reasons of identity.Observer.
func (m *Metrics) Throttled(reason string) {
	if m == nil {
		return
	}
	m.throttled.WithLabelValues(reason).Inc()
}

// TokenRefresh counts an OAuth token refresh.
func (m *Metrics) TokenRefresh(ok bool) {
	if m == nil {
		return
	}
	r := "ok"
	if !ok {
		r = "failed"
	}
	m.tokenRefreshes.WithLabelValues(r).Inc()
}

// ProxyRefused counts a connection refused by a PROXY-protocol listener.
func (m *Metrics) ProxyRefused(reason string) {
	if m == nil {
		return
	}
	m.proxyRefused.WithLabelValues(reason).Inc()
}

// Upstream observes one call to a backend.
func (m *Metrics) Upstream(backend, op string, d time.Duration) {
	if m == nil {
		return
	}
	m.upstream.WithLabelValues(backend, op).Observe(d.Seconds())
}

// SnapshotCache counts one login served from the cache (hit) or not.
func (m *Metrics) SnapshotCache(hit bool) {
	if m == nil {
		return
	}
	r := "miss"
	if hit {
		r = "hit"
	}
	m.snapshotCache.WithLabelValues(r).Inc()
}

// SetReady records the readiness answer (popgate_ready).
func (m *Metrics) SetReady(ok bool) {
	if m == nil {
		return
	}
	m.readyGauge.Set(b2f(ok))
}

// SetRedisUp records the last Redis health check (popgate_redis_up).
func (m *Metrics) SetRedisUp(ok bool) {
	if m == nil {
		return
	}
	m.redisUp.Set(b2f(ok))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Timer measures one upstream call: defer m.Time(backend, op)().
func (m *Metrics) Time(backend, op string) func() {
	if m == nil {
		return func() {}
	}
	start := time.Now()
	return func() { m.Upstream(backend, op, time.Since(start)) }
}

#!/usr/bin/env bash
# Run a local, single-node Apache Kafka 4.x broker (KRaft, combined
# broker+controller) without Docker, for development and CI.
#
#   scripts/kafka-local.sh up       fetch (once), format (once), start, wait until ready
#   scripts/kafka-local.sh down     stop (SIGTERM, then SIGKILL after 30 s)
#   scripts/kafka-local.sh status   print running/stopped; exit 0 if running, 1 if not
#   scripts/kafka-local.sh logs [-f] [N]   show the last N (100) lines of server.log
#
# Why this shape: there is no Docker engine and no Kafka tarball mirror here,
# but Maven Central is reachable, so the broker is assembled from its Maven
# artifacts (kafka_2.13 and everything it needs at runtime) and launched with
# plain `java -cp`, the same way bin/kafka-server-start.sh does.
#
# Environment overrides:
#   KAFKA_VERSION          Kafka release to run                (default 4.1.2)
#   KAFKA_CACHE_DIR        where the jars are kept             (default ~/.cache/pipeline-kafka/<version>)
#   KAFKA_DATA_DIR         config, KRaft data, logs, pid file  (default <repo>/.local/kafka)
#   KAFKA_PORT             client listener on 127.0.0.1        (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener           (default 9093)
#   KAFKA_SASL_PORT        SASL_PLAINTEXT client listener      (default 9094)
#   KAFKA_HEAP             JVM heap flags                      (default "-Xmx512m -Xms256m")
#   KAFKA_START_TIMEOUT    seconds to wait for readiness       (default 90)
#   JAVA_HOME              Java 17+ to use (else `java` on PATH)
#
# Besides the PLAINTEXT client listener, the broker has a SASL_PLAINTEXT one
# (mechanism PLAIN) with one fixed test user, pipeline / pipeline-secret, for
# the tests of the clients' security settings (tests/integration/test_sasl.py).
# Local testing only: PLAIN over plaintext sends the password in clear.
set -euo pipefail

# --- settings ---------------------------------------------------------------

# 4.1.x: a mature 4.x line whose broker runs on Java 17 (the Java on our
# machines). Kafka 4.x brokers need Java 17+; older 3.x would still need
# ZooKeeper-era tooling we do not want.
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
# Kafka ships slf4j 1.7 + the log4j2 binding in its distribution's libs/; the
# Maven poms do not name a binding, so we add it ourselves. Pinned here (not
# taken from Kafka's pom) so logging works the same for every KAFKA_VERSION.
LOG4J_VERSION="2.25.3"
SLF4J_VERSION="1.7.36"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

CACHE_DIR="${KAFKA_CACHE_DIR:-${HOME}/.cache/pipeline-kafka/${KAFKA_VERSION}}"
LIB_DIR="${CACHE_DIR}/libs"
# Written only after every jar is in place, so an interrupted download is
# redone instead of leaving a half-filled classpath that looks complete.
CACHE_MARKER="${CACHE_DIR}/.complete"

DATA_DIR="${KAFKA_DATA_DIR:-${REPO_ROOT}/.local/kafka}"
CONF_DIR="${DATA_DIR}/config"
LOG_DIR="${DATA_DIR}/logs"
KRAFT_DIR="${DATA_DIR}/data"
PID_FILE="${DATA_DIR}/kafka.pid"
LOCK_FILE="${DATA_DIR}/.lock"
SERVER_PROPS="${CONF_DIR}/server.properties"
LOG4J_CONF="${CONF_DIR}/log4j2.xml"
SERVER_LOG="${LOG_DIR}/server.log"
# stdout/stderr of the JVM itself: catches crashes before log4j is up.
CONSOLE_LOG="${LOG_DIR}/kafka.out"

HOST="127.0.0.1"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
SASL_PORT="${KAFKA_SASL_PORT:-9094}"
# The SASL listener's only user (fixed: tests log in with it).
SASL_USER="pipeline"
SASL_PASSWORD="pipeline-secret"
# Intentionally unquoted where used: it holds several JVM flags.
HEAP="${KAFKA_HEAP:--Xmx512m -Xms256m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=30

if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
  JAVA="${JAVA_HOME}/bin/java"
else
  JAVA="java"
fi

# Main classes. kafka.Kafka is the broker entry point in every 4.x release.
# StorageTool and TopicCommand are looked up in the jars (see find_main_class)
# because Kafka has been moving tools from Scala `kafka.tools` to Java
# `org.apache.kafka.tools` across releases.
BROKER_MAIN="kafka.Kafka"
STORAGE_MAIN=""
TOPIC_MAIN=""

log() { printf 'kafka-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- fetching ---------------------------------------------------------------

check_java() {
  command -v "${JAVA}" >/dev/null 2>&1 || die "java not found (install Java 17+ or set JAVA_HOME)"
  local version major
  # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15
  version="$("${JAVA}" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  major="${version%%.*}"
  if [[ "${major}" == "1" ]]; then major="$(cut -d. -f2 <<<"${version}")"; fi
  [[ "${major}" =~ ^[0-9]+$ ]] || die "cannot parse Java version from '${version}'"
  ((major >= 17)) || die "Kafka ${KAFKA_VERSION} brokers need Java 17+, found ${version} (${JAVA})"
}

write_pom() {
  # A throwaway project whose only purpose is to let
  # `mvn dependency:copy-dependencies` resolve the broker's runtime classpath.
  cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pipeline</groupId>
  <artifactId>kafka-local-classpath</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <!-- kafka-server pulls log4j-api/core transitively; keep all log4j
           jars on one version so the slf4j binding below matches. -->
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>${LOG4J_VERSION}</version></dependency>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${LOG4J_VERSION}</version></dependency>
      <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>${SLF4J_VERSION}</version></dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <!-- The broker: core plus (as runtime deps) server, metadata, raft,
         storage and the group/transaction/share coordinators. -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <!-- Admin tools (TopicCommand, ...) for the readiness check and for
         developers. Kafka Connect's runtime (Jetty, Jersey) is not needed
         by any of the tools we use, so leave it out. -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>${KAFKA_VERSION}</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- Logging, as in Kafka's binary distribution: log4j2 behind slf4j 1.7. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-1.2-api</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>${SLF4J_VERSION}</version></dependency>
  </dependencies>
</project>
EOF
}

find_main_class() {
  # Print the first of the given class names that exists in the cached jars.
  local cls path jar
  for cls in "$@"; do
    path="${cls//.//}.class"
    for jar in "${LIB_DIR}"/*.jar; do
      if unzip -l "${jar}" "${path}" >/dev/null 2>&1; then
        printf '%s\n' "${cls}"
        return 0
      fi
    done
  done
  return 1
}

fetch() {
  if [[ -f "${CACHE_MARKER}" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: needed once to fetch Kafka ${KAFKA_VERSION} from Maven Central"
  command -v unzip >/dev/null 2>&1 || die "unzip not found"
  mkdir -p "${CACHE_DIR}"
  # The cache may be shared by several checkouts (it lives outside the repo):
  # one fetch at a time, and re-check once we hold the lock.
  exec 8>"${CACHE_DIR}/.lock"
  flock 8
  if [[ -f "${CACHE_MARKER}" ]]; then
    exec 8>&-
    return 0
  fi
  log "fetching Kafka ${KAFKA_VERSION} and its runtime dependencies into ${CACHE_DIR} (once)"
  # Leftovers of failed fetches (kept for their mvn.log until now).
  rm -rf "${CACHE_DIR}"/.fetch.*
  local work
  work="$(mktemp -d "${CACHE_DIR}/.fetch.XXXXXX")"
  write_pom "${work}/pom.xml"
  if ! mvn -B -q -f "${work}/pom.xml" "${DEP_PLUGIN}:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="${work}/libs" >"${work}/mvn.log" 2>&1; then
    tail -n 40 "${work}/mvn.log" >&2 || true
    die "Maven could not resolve Kafka ${KAFKA_VERSION} (log: ${work}/mvn.log)"
  fi
  # Swap the complete set into place, then mark it done.
  rm -rf "${LIB_DIR}"
  mv "${work}/libs" "${LIB_DIR}"
  cp "${work}/pom.xml" "${CACHE_DIR}/pom.xml"
  rm -rf "${work}"

  local storage_main topic_main
  storage_main="$(find_main_class kafka.tools.StorageTool org.apache.kafka.tools.StorageTool)" \
    || die "no StorageTool class in Kafka ${KAFKA_VERSION} jars"
  topic_main="$(find_main_class org.apache.kafka.tools.TopicCommand kafka.admin.TopicCommand)" \
    || die "no TopicCommand class in Kafka ${KAFKA_VERSION} jars"
  find_main_class "${BROKER_MAIN}" >/dev/null || die "no ${BROKER_MAIN} class in Kafka ${KAFKA_VERSION} jars"
  {
    printf 'STORAGE_MAIN=%s\n' "${storage_main}"
    printf 'TOPIC_MAIN=%s\n' "${topic_main}"
  } >"${CACHE_DIR}/main-classes.env"
  date -u +%Y-%m-%dT%H:%M:%SZ >"${CACHE_MARKER}"
  exec 8>&-
  log "cached $(find "${LIB_DIR}" -name '*.jar' | wc -l) jars ($(du -sh "${LIB_DIR}" | cut -f1))"
}

load_main_classes() {
  # Parsed, not sourced: the cache dir may be shared, keep it data-only.
  local key value
  while IFS='=' read -r key value; do
    case "${key}" in
      STORAGE_MAIN) STORAGE_MAIN="${value}" ;;
      TOPIC_MAIN) TOPIC_MAIN="${value}" ;;
    esac
  done <"${CACHE_DIR}/main-classes.env"
  [[ -n "${STORAGE_MAIN}" && -n "${TOPIC_MAIN}" ]] || die "bad ${CACHE_DIR}/main-classes.env; delete ${CACHE_MARKER} to refetch"
}

# --- configuration ----------------------------------------------------------

write_config() {
  mkdir -p "${CONF_DIR}" "${LOG_DIR}" "${KRAFT_DIR}"
  # Regenerated on every `up` so port/env changes take effect; the KRaft data
  # (cluster id, topics) lives in ${KRAFT_DIR} and is kept.
  cat >"${SERVER_PROPS}" <<EOF
# Generated by scripts/kafka-local.sh; edits are overwritten on the next 'up'.
process.roles=broker,controller
node.id=1
# Static single-voter quorum: simplest KRaft setup for one node.
controller.quorum.voters=1@${HOST}:${CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT},SASL_PLAINTEXT://${HOST}:${SASL_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${PORT},SASL_PLAINTEXT://${HOST}:${SASL_PORT}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# SASL/PLAIN on the SASL_PLAINTEXT listener only (the default mechanism is GSSAPI).
# user_<name>="<password>" declares the users the broker accepts.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${SASL_USER}="${SASL_PASSWORD}";
log.dirs=${KRAFT_DIR}

# One broker: every internal topic must live with replication factor 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the default 50: faster first group/txn use
# on a small box, and nothing here needs the spread.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
share.coordinator.state.topic.num.partitions=4

# Tests should not wait 3 s for the first rebalance.
group.initial.rebalance.delay.ms=0
num.partitions=1
default.replication.factor=1
# Clients such as Faust create their internal topics implicitly.
auto.create.topics.enable=true
delete.topic.enable=true

# Sized for a 2-core dev/CI machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF

  # Kafka 4 logs through log4j2; this mirrors the important parts of its
  # config/log4j2.yaml, in XML because log4j-core parses that without extras.
  cat >"${LOG4J_CONF}" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka-local.sh; edits are overwritten on the next 'up'. -->
<Configuration status="warn">
  <Properties>
    <Property name="logDir">${sys:kafka.logs.dir}</Property>
    <Property name="pattern">[%d] %p %m (%c)%n</Property>
  </Properties>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="${pattern}"/>
      <ThresholdFilter level="WARN"/>
    </Console>
    <RollingFile name="server" fileName="${logDir}/server.log" filePattern="${logDir}/server.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <SizeBasedTriggeringPolicy size="50MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
    <RollingFile name="controller" fileName="${logDir}/controller.log" filePattern="${logDir}/controller.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <SizeBasedTriggeringPolicy size="20MB"/>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
    <RollingFile name="stateChange" fileName="${logDir}/state-change.log" filePattern="${logDir}/state-change.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <SizeBasedTriggeringPolicy size="20MB"/>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO">
      <AppenderRef ref="STDOUT"/>
      <AppenderRef ref="server"/>
    </Root>
    <Logger name="kafka.controller" level="INFO" additivity="false"><AppenderRef ref="controller"/></Logger>
    <Logger name="org.apache.kafka.controller" level="INFO" additivity="false"><AppenderRef ref="controller"/></Logger>
    <Logger name="state.change.logger" level="INFO" additivity="false"><AppenderRef ref="stateChange"/></Logger>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="INFO"/>
    <Logger name="org.apache.kafka.raft" level="INFO"/>
  </Loggers>
</Configuration>
EOF
}

# Tools share the broker's classpath; they log WARN+ to stderr only.
run_tool() {
  local main="$1"
  shift
  "${JAVA}" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.xml" \
    -cp "${LIB_DIR}/*" "${main}" "$@"
}

write_tools_log_config() {
  cat >"${CONF_DIR}/tools-log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <Console name="STDERR" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="STDERR"/></Root></Loggers>
</Configuration>
EOF
}

format_storage() {
  # Formatting is one-time: it writes meta.properties with the cluster id.
  # Reformatting would throw away every topic, so only do it when missing.
  if [[ -f "${KRAFT_DIR}/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(run_tool "${STORAGE_MAIN}" random-uuid)"
  log "formatting KRaft storage in ${KRAFT_DIR} (cluster id ${cluster_id})"
  # --ignore-formatted: a half-formatted dir from a crash is not fatal.
  run_tool "${STORAGE_MAIN}" format -t "${cluster_id}" -c "${SERVER_PROPS}" --ignore-formatted >/dev/null
}

# --- process state ----------------------------------------------------------

# Prints the broker pid if the pid file names a live process that is our
# broker (guards against pid reuse after a reboot or crash).
broker_pid() {
  [[ -f "${PID_FILE}" ]] || return 1
  local pid
  pid="$(<"${PID_FILE}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  if [[ -r "/proc/${pid}/cmdline" ]]; then
    tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -q -- "${BROKER_MAIN} " || return 1
  fi
  printf '%s\n' "${pid}"
}

port_open() {
  # bash's /dev/tcp: no python/nc needed just to see if something listens.
  timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/$1" 2>/dev/null
}

# A real Kafka round trip (metadata request) rather than just an open socket:
# the port opens a moment before the broker can serve requests.
kafka_answers() {
  timeout 30 "${JAVA}" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.xml" \
    -cp "${LIB_DIR}/*" "${TOPIC_MAIN}" --bootstrap-server "${HOST}:${PORT}" --list >/dev/null 2>&1
}

# Byte size of server.log when this start began: on failure, show only what
# this start wrote (log4j appends across restarts).
LOG_START_OFFSET=0
# Pid of a broker this invocation launched; a failed start stops it again so
# no half-started JVM is left behind (e.g. holding the ports in CI).
STARTED_PID=""

fail_start() {
  log "ERROR: $*"
  if [[ -n "${STARTED_PID}" ]] && kill -0 "${STARTED_PID}" 2>/dev/null; then
    log "stopping the broker this start launched (pid ${STARTED_PID})"
    stop_pid "${STARTED_PID}" 10
  fi
  if [[ -n "${STARTED_PID}" ]]; then rm -f "${PID_FILE}"; fi
  local recent=""
  if [[ -s "${SERVER_LOG}" ]]; then
    recent="$(tail -c "+$((LOG_START_OFFSET + 1))" "${SERVER_LOG}" | tail -n 40)"
  fi
  if [[ -n "${recent}" ]]; then
    log "--- last lines of ${SERVER_LOG} from this start ---"
    printf '%s\n' "${recent}" >&2
  fi
  if [[ -s "${CONSOLE_LOG}" ]]; then
    log "--- ${CONSOLE_LOG} (JVM output) ---"
    tail -n 40 "${CONSOLE_LOG}" >&2
  fi
  exit 1
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ! port_open "${PORT}"; do
    kill -0 "${pid}" 2>/dev/null || fail_start "broker process ${pid} exited during startup"
    ((SECONDS < deadline)) || fail_start "broker did not open ${HOST}:${PORT} within ${START_TIMEOUT}s"
    sleep 0.5
  done
  until kafka_answers; do
    kill -0 "${pid}" 2>/dev/null || fail_start "broker process ${pid} exited during startup"
    ((SECONDS < deadline)) || fail_start "broker on ${HOST}:${PORT} did not answer a metadata request within ${START_TIMEOUT}s"
    sleep 1
  done
  while ! port_open "${SASL_PORT}"; do
    kill -0 "${pid}" 2>/dev/null || fail_start "broker process ${pid} exited during startup"
    ((SECONDS < deadline)) || fail_start "broker did not open its SASL listener ${HOST}:${SASL_PORT} within ${START_TIMEOUT}s"
    sleep 0.5
  done
}

# --- commands ---------------------------------------------------------------

# ", SASL_PLAINTEXT on host:port" when the SASL listener is open; otherwise says
# it is not (a broker started before the listener was added: down, then up).
sasl_status() {
  if port_open "${SASL_PORT}"; then
    printf ', SASL_PLAINTEXT on %s:%s' "${HOST}" "${SASL_PORT}"
  else
    printf ', no SASL_PLAINTEXT listener on %s:%s (restart it: down, then up)' "${HOST}" "${SASL_PORT}"
  fi
}

stop_pid() {
  local pid="$1" grace="$2"
  # SIGTERM runs Kafka's shutdown hook: controlled shutdown and a clean log
  # close, so the next start skips log recovery. SIGKILL only as a last resort.
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "${pid}" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid ${pid} still running after ${grace}s; sending SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
}

with_lock() {
  # Two concurrent `up`s (e.g. parallel test jobs) must not start two brokers.
  mkdir -p "${DATA_DIR}"
  exec 9>"${LOCK_FILE}"
  flock 9
}

cmd_up() {
  with_lock
  local pid
  if pid="$(broker_pid)"; then
    if port_open "${PORT}"; then
      log "already running (pid ${pid}) on ${HOST}:${PORT}$(sasl_status)"
      return 0
    fi
    # Alive but not listening yet: probably another `up` still starting it.
    fetch
    load_main_classes
    log "broker pid ${pid} is starting; waiting"
    wait_ready "${pid}"
    log "ready on ${HOST}:${PORT}, SASL_PLAINTEXT on ${HOST}:${SASL_PORT} (pid ${pid})"
    return 0
  fi
  rm -f "${PID_FILE}"

  check_java
  if port_open "${PORT}"; then
    die "${HOST}:${PORT} is already in use by another process (set KAFKA_PORT)"
  fi
  if port_open "${CONTROLLER_PORT}"; then
    die "${HOST}:${CONTROLLER_PORT} is already in use by another process (set KAFKA_CONTROLLER_PORT)"
  fi
  if port_open "${SASL_PORT}"; then
    die "${HOST}:${SASL_PORT} is already in use by another process (set KAFKA_SASL_PORT)"
  fi

  local t0=${SECONDS}
  fetch
  load_main_classes
  write_config
  write_tools_log_config
  format_storage

  if [[ -f "${SERVER_LOG}" ]]; then LOG_START_OFFSET="$(stat -c %s "${SERVER_LOG}")"; fi
  log "starting Kafka ${KAFKA_VERSION} on ${HOST}:${PORT} (controller ${CONTROLLER_PORT}, SASL_PLAINTEXT ${SASL_PORT}); logs in ${LOG_DIR}"
  # setsid + nohup: the broker must outlive this script and the terminal or
  # CI step that ran it, and must not get the caller's Ctrl-C. In a
  # non-interactive shell the background child is not a group leader, so
  # setsid does not fork and $! is the JVM's own pid. `8>&- 9>&-` keep the
  # lock fds out of the broker, or it would hold the locks for its whole life.
  # shellcheck disable=SC2086  # HEAP holds several flags on purpose.
  setsid nohup "${JAVA}" ${HEAP} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -Djava.awt.headless=true \
    -Dkafka.logs.dir="${LOG_DIR}" \
    -Dlog4j2.configurationFile="${LOG4J_CONF}" \
    -cp "${LIB_DIR}/*" "${BROKER_MAIN}" "${SERVER_PROPS}" \
    >"${CONSOLE_LOG}" 2>&1 </dev/null 8>&- 9>&- &
  pid=$!
  printf '%s\n' "${pid}" >"${PID_FILE}"
  STARTED_PID="${pid}"

  wait_ready "${pid}"
  log "ready on ${HOST}:${PORT}, SASL_PLAINTEXT on ${HOST}:${SASL_PORT} (user ${SASL_USER}) (pid ${pid}) after $((SECONDS - t0))s"
}

cmd_down() {
  with_lock
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "${PID_FILE}"
    log "not running"
    return 0
  fi
  log "stopping broker (pid ${pid})"
  stop_pid "${pid}" "${STOP_TIMEOUT}"
  rm -f "${PID_FILE}"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(broker_pid)"; then
    if port_open "${PORT}"; then
      echo "running (pid ${pid}) on ${HOST}:${PORT}$(sasl_status)"
    else
      echo "running (pid ${pid}), not yet listening on ${HOST}:${PORT}"
    fi
    return 0
  fi
  echo "stopped"
  return 1
}

cmd_logs() {
  local follow=() lines=100
  while (($#)); do
    case "$1" in
      -f | --follow) follow=(-F) ;;
      *[!0-9]* | '') die "usage: $0 logs [-f] [LINES]" ;;
      *) lines="$1" ;;
    esac
    shift
  done
  [[ -f "${SERVER_LOG}" ]] || die "no log yet at ${SERVER_LOG}"
  exec tail -n "${lines}" "${follow[@]}" "${SERVER_LOG}"
}

usage() {
  # The header comment above is the help text.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "${cmd}" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"

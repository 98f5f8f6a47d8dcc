#!/usr/bin/env bash
# Start the local services the tests talk to, if they are not already up (commands from the machine's docs).
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 6379 && command -v redis-server >/dev/null; then
  echo "starting redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! up 3306 && command -v mariadbd >/dev/null; then
  echo "starting mariadb on 127.0.0.1:3306"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do up 3306 && break; sleep 1; done
fi
# Prometheus and promtool (Debian's package; installing starts no server): the observability tests
# run promtool on ops/prometheus and start their own prometheus on a free loopback port.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "installing prometheus (Debian package: prometheus, promtool) for the observability tests"
    log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } >"$log" 2>&1; then
      echo "could not install prometheus; the observability tests will fail. apt-get said:"; tail -n 20 "$log"
    fi
    rm -f "$log"
  else
    echo "prometheus is missing and there is no apt-get: install Prometheus 2.x (prometheus, promtool) by hand"
  fi
fi
exit 0

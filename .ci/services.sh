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
exit 0

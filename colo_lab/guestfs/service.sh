#!/bin/sh
# One TCP connection of the lab's HTTP/1.1 service (run by tcpsvd per
# connection). Keep-alive: serves requests until the client closes.
#
# Deterministic endpoints (same request bytes -> same response bytes on every
# replica; no Date or Server header, no timestamps):
#   GET  /            fixed page
#   GET  /health      "ok"
#   GET  /blob/N      the first N bytes of a fixed 1 MiB pattern
#   POST /echo        the request body
#   PUT  /kv/KEY      store the body under KEY (answers "stored N")
#   GET  /kv/KEY      the stored body, or 404
# Non-deterministic on purpose (to cause divergence):
#   GET  /random      a fresh random UUID and the uptime
cr=$(printf '\r')
resp=/tmp/resp.$$
trap 'rm -f "$resp" "$resp.body"' EXIT

reply() {  # status text, body in $resp
    len=$(wc -c < "$resp")
    printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\n\r\n' "$1" "$len"
    cat "$resp"
}

while read -r method path proto; do
    method=${method%"$cr"}; path=${path%"$cr"}
    [ -z "$method" ] && continue
    clen=0
    close=0
    while read -r line; do
        line=${line%"$cr"}
        [ -z "$line" ] && break
        case "$line" in
            [Cc]ontent-[Ll]ength:*) clen=${line#*:}; clen=${clen# } ;;
            [Cc]onnection:*[Cc]lose*) close=1 ;;
        esac
    done
    if [ "$clen" -gt 0 ] 2>/dev/null; then
        head -c "$clen" > "$resp.body"
    else
        : > "$resp.body"
    fi
    status="200 OK"
    case "$method $path" in
        "GET /") printf 'colo lab service\n' > "$resp" ;;
        "GET /health") printf 'ok\n' > "$resp" ;;
        "GET /blob/"*)
            n=${path#/blob/}
            if [ "$n" -ge 0 ] 2>/dev/null && [ "$n" -le 1048576 ]; then
                head -c "$n" /srv/pattern > "$resp"
            else
                status="400 Bad Request"; printf 'bad size\n' > "$resp"
            fi ;;
        "POST /echo") cp "$resp.body" "$resp" ;;
        "PUT /kv/"*)
            key=${path#/kv/}
            case "$key" in */*|.*|"") status="400 Bad Request"; printf 'bad key\n' > "$resp" ;;
            *) cp "$resp.body" "$KV/$key" && sync
               printf 'stored %s\n' "$(wc -c < "$KV/$key")" > "$resp" ;;
            esac ;;
        "GET /kv/"*)
            key=${path#/kv/}
            if [ -f "$KV/$key" ] && [ "${key#*/}" = "$key" ]; then
                cp "$KV/$key" "$resp"
            else
                status="404 Not Found"; printf 'no such key\n' > "$resp"
            fi ;;
        "GET /random")
            printf '%s %s\n' "$(cat /proc/sys/kernel/random/uuid)" "$(cut -d' ' -f1 /proc/uptime)" > "$resp" ;;
        *) status="404 Not Found"; printf 'not found\n' > "$resp" ;;
    esac
    reply "$status"
    [ "$close" = 1 ] && break
done

#!/usr/bin/env python3
"""Drift latency against a running kubesync controller, through `kubectl proxy`.

    drift.py PROXY_PORT NAMESPACE N EDITS DELETES

The objects are tests/bench/lib.sh's (obj-i: ConfigMap cm-i when i % 3 == 0, Deployment deploy-i
when i % 3 == 2). Each edit changes one object the way a person would (a ConfigMap's data, a
Deployment's replicas), each on a different object; the clock runs from just before the PATCH
(or DELETE) is sent to the watch event that shows Git's state again. Prints one line per sample:
"edit|delete SECONDS".
"""
import http.client
import json
import sys
import time

port, ns, n, edits, deletes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def request(method, path, body=None, content_type="application/merge-patch+json"):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    headers = {"Content-Type": content_type} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data)


def wait_until(collection, name, since, done, deadline=30.0):
    """Watches one object from resourceVersion `since` until `done(event)`; returns the time."""
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=deadline)
    path = f"{collection}?watch=1&fieldSelector=metadata.name%3D{name}&resourceVersion={since}"
    conn.request("GET", path)
    response = conn.getresponse()
    buffer = b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            raise SystemExit(f"watch of {name} ended before Git's state came back")
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip() and done(json.loads(line)):
                now = time.perf_counter()
                conn.close()
                return now


configmaps = f"/api/v1/namespaces/{ns}/configmaps"
deployments = f"/apis/apps/v1/namespaces/{ns}/deployments"
configmap_ids = [i for i in range(n) if i % 3 == 0]
deployment_ids = [i for i in range(n) if i % 3 == 2]

for k in range(edits):
    if k % 2 == 0:
        i = configmap_ids[k // 2 % len(configmap_ids)]
        name, collection = f"cm-{i}", configmaps
        before = request("GET", f"{collection}/{name}")["data"]["value"]
        started = time.perf_counter()
        patched = request("PATCH", f"{collection}/{name}", {"data": {"value": "edited-by-hand"}})
        restored = wait_until(collection, name, patched["metadata"]["resourceVersion"],
                              lambda e: e["object"].get("data", {}).get("value") == before)
    else:
        i = deployment_ids[k // 2 % len(deployment_ids)]
        name, collection = f"deploy-{i}", deployments
        started = time.perf_counter()
        patched = request("PATCH", f"{collection}/{name}", {"spec": {"replicas": 2}})
        restored = wait_until(collection, name, patched["metadata"]["resourceVersion"],
                              lambda e: e["object"]["spec"].get("replicas") == 0)
    print(f"edit {restored - started:.4f}", flush=True)
    time.sleep(0.2)

for k in range(deletes):
    i = configmap_ids[-(k + 1)]
    name = f"cm-{i}"
    started = time.perf_counter()
    deleted = request("DELETE", f"{configmaps}/{name}")
    since = deleted.get("metadata", {}).get("resourceVersion", "0")
    restored = wait_until(configmaps, name, since, lambda e: e["type"] == "ADDED")
    print(f"delete {restored - started:.4f}", flush=True)
    time.sleep(0.2)

"""An in-process Weaviate for the contract suite: REST (schema, meta, readiness) and gRPC (batch, search,
delete, aggregate, tenants, health) on loopback, built on the gRPC stubs weaviate-client ships, so the
real client and ragbus's adapter run unmodified against it.

What it models: collections with a self-provided named vector, multi-tenancy with auto tenant
creation, batch upserts by uuid with per-object errors (a vector of the wrong length is refused),
filters (equal, less than, contains any, and/or) on text, int and text[] properties, near_vector search
(cosine distance), BM25 search over the query properties with per-property boosts (`name^2`, BM25F-style
weighted term frequencies and lengths), fetch with filters, delete-many by filter, object counts (with
filters), schema updates (PUT), property updates of one object (PATCH) and tenant listing.

Where it answers like the real server, that is on purpose and sourced: a read of a tenant that does
not exist fails with gRPC UNKNOWN (the server returns a plain error there), `tenants.exists` is the REST
HEAD /v1/schema/{class}/tenants/{name} answering 200 or 404.

What it does not model (so tests here cannot tell you about it): HNSW approximation and recall,
Weaviate's exact BM25 tokenisation (it splits on non-word characters; ragbus searches pre-analysed text
split on spaces, which splits the same) and stopword handling, consistency levels, replication,
persistence (beyond a whole-state file rewritten after each change), authentication, references, hybrid
search (the adapter asks for each retriever's candidates and retrieval/ fuses them), generative and
rerank modules, and every schema default the real server fills in beyond what the client needs to parse
it.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import signal
import threading
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

from engine.broker import free_port

VERSION = "1.32.4"  # tests may patch WeaviateDouble.version
F = base_pb2.Filters


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self.data: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # collection -> tenant -> uuid -> obj
        self.version = VERSION
        self.lock = threading.RLock()
        #: When set, every data call (batch, delete, search, aggregate) fails with this gRPC status.
        self.fail_with: grpc.StatusCode | None = None
        #: Where the state is kept across restarts of the double's process (None: in memory only). Written
        #: whole after every change that was acknowledged, as Weaviate's own write-ahead log makes it durable.
        self.path = path
        if path is not None and path.exists():
            self.schemas, self.data = pickle.loads(path.read_bytes())

    def save(self) -> None:
        if self.path is not None:
            with self.lock:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_bytes(pickle.dumps((self.schemas, self.data)))
                tmp.replace(self.path)

    def dims(self, collection: str) -> dict[str, int]:
        return self.schemas[collection].setdefault("_dims", {})


def _with_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema.setdefault("description", "")
    schema.setdefault("invertedIndexConfig", {})
    inv = schema["invertedIndexConfig"]
    inv.setdefault("bm25", {"b": 0.75, "k1": 1.2})
    inv.setdefault("cleanupIntervalSeconds", 60)
    stopwords = inv.setdefault("stopwords", {})
    for key, value in {"preset": "en", "additions": None, "removals": None}.items():
        stopwords.setdefault(key, value)
    inv.setdefault("indexNullState", False)
    inv.setdefault("indexPropertyLength", False)
    inv.setdefault("indexTimestamps", False)
    schema.setdefault("multiTenancyConfig", {"enabled": False})
    schema["multiTenancyConfig"].setdefault("autoTenantCreation", False)
    schema["multiTenancyConfig"].setdefault("autoTenantActivation", False)
    schema.setdefault("replicationConfig", {"factor": 1, "asyncEnabled": False,
                                            "deletionStrategy": "NoAutomatedResolution"})
    schema.setdefault("shardingConfig", {"virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1,
                                         "desiredVirtualCount": 128, "actualVirtualCount": 128, "key": "_id",
                                         "strategy": "hash", "function": "murmur3"})
    for prop in schema.setdefault("properties", []):
        prop.setdefault("indexFilterable", True)
        prop.setdefault("indexSearchable", prop["dataType"][0].startswith("text"))
        prop.setdefault("indexRangeFilters", False)
        prop.setdefault("description", "")
        if prop["dataType"][0].startswith("text"):
            prop.setdefault("tokenization", "word")
    for vec in (schema.get("vectorConfig") or {}).values():
        vec.setdefault("vectorIndexType", "hnsw")
        cfg = vec.setdefault("vectorIndexConfig", {})
        for key, value in {"distance": "cosine", "ef": -1, "efConstruction": 128, "maxConnections": 32,
                           "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8, "flatSearchCutoff": 40000,
                           "cleanupIntervalSeconds": 300, "skip": False, "vectorCacheMaxObjects": 1000000000000,
                           "filterStrategy": "sweeping"}.items():
            cfg.setdefault(key, value)
        for q in ("pq", "bq", "sq", "rq"):
            cfg.setdefault(q, {"enabled": False})
    return schema


def _rest(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any = None) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"null")

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/v1/meta":
                return self._send(200, {"version": store.version, "modules": {}, "hostname": "http://[::]:8080"})
            if path in ("/v1/.well-known/ready", "/v1/.well-known/live"):
                return self._send(200)
            m = re.fullmatch(r"/v1/schema/([^/]+)", path)
            if m:
                schema = store.schemas.get(m.group(1))
                return self._send(200, {k: v for k, v in schema.items() if k != "_dims"}) if schema else \
                    self._send(404, {"error": [{"message": "not found"}]})
            if path == "/v1/schema":
                return self._send(200, {"classes": [{k: v for k, v in s.items() if k != "_dims"}
                                                    for s in store.schemas.values()]})
            return self._send(404, {"error": [{"message": f"no route {path}"}]})

        def do_HEAD(self) -> None:
            path = self.path.split("?")[0]
            tenant = re.fullmatch(r"/v1/schema/([^/]+)/tenants/([^/]+)", path)
            if tenant:  # tenants.exists(): 200 or 404, as the server answers
                return self._send(200 if tenant.group(2) in store.data.get(tenant.group(1), {}) else 404)
            self._send(200 if re.fullmatch(r"/v1/schema/([^/]+)", path) and path.split("/")[-1] in store.schemas
                       else 404)

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/v1/schema":
                with store.lock:
                    store.schemas[body["class"]] = _with_defaults(body)
                    store.data[body["class"]] = {}
                store.save()
                return self._send(200, {k: v for k, v in store.schemas[body["class"]].items() if k != "_dims"})
            m = re.fullmatch(r"/v1/schema/([^/]+)/properties", self.path)
            if m:
                store.schemas[m.group(1)]["properties"].append(_with_defaults({"properties": [body]})["properties"][0])
                store.save()
                return self._send(200, body)
            return self._send(404, {"error": [{"message": f"no route {self.path}"}]})

        def do_PUT(self) -> None:
            body = self._body()
            m = re.fullmatch(r"/v1/schema/([^/]+)", self.path)
            if m and m.group(1) in store.schemas:
                with store.lock:
                    dims = store.schemas[m.group(1)].get("_dims", {})
                    store.schemas[m.group(1)] = _with_defaults(body) | {"_dims": dims}
                store.save()
                return self._send(200, body)
            return self._send(404, {"error": [{"message": f"no route {self.path}"}]})

        def do_PATCH(self) -> None:
            """Merge properties into one object (data.update), as the server does: its vectors stay."""
            body = self._body()
            path, _, query = self.path.partition("?")
            m = re.fullmatch(r"/v1/objects/([^/]+)/([^/]+)", path)
            tenant = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("tenant") or body.get("tenant")
            with store.lock:
                obj = store.data.get(m.group(1), {}).get(tenant or "", {}).get(m.group(2)) if m else None
                if obj is None:
                    return self._send(404, {"error": [{"message": f"no object at {path}"}]})
                obj["props"].update(body.get("properties") or {})
            store.save()
            return self._send(204)

        def do_DELETE(self) -> None:
            m = re.fullmatch(r"/v1/schema/([^/]+)", self.path)
            if m:  # a collection and all its tenants' objects, as the server drops them
                with store.lock:
                    store.schemas.pop(m.group(1), None)
                    store.data.pop(m.group(1), None)
                store.save()
            self._send(200)

        def log_message(self, *args: Any) -> None:
            return

    return Handler


def _props(obj: batch_pb2.BatchObject) -> dict[str, Any]:
    p = obj.properties
    out: dict[str, Any] = json_format.MessageToDict(p.non_ref_properties) if p.HasField("non_ref_properties") else {}
    for arr in p.text_array_properties:
        out[arr.prop_name] = list(arr.values)
    for arr in p.int_array_properties:
        out[arr.prop_name] = list(arr.values)
    for name in p.empty_list_props:
        out[name] = []
    return out


def _vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4")


def _match(f: base_pb2.Filters, props: dict[str, Any]) -> bool:
    op = f.operator
    if op == F.OPERATOR_AND:
        return all(_match(x, props) for x in f.filters)
    if op == F.OPERATOR_OR:
        return any(_match(x, props) for x in f.filters)
    name = f.target.property if f.HasField("target") else f.on[0]
    value = props.get(name)
    kind = f.WhichOneof("test_value")
    want: Any = {"value_text": f.value_text, "value_int": f.value_int, "value_number": f.value_number,
                 "value_boolean": f.value_boolean}.get(kind or "")
    if kind == "value_text_array":
        want = list(f.value_text_array.values)
    if op == F.OPERATOR_EQUAL:
        return value == want or (isinstance(value, float) and value == float(want))
    if op == F.OPERATOR_NOT_EQUAL:
        return value != want
    if op == F.OPERATOR_LESS_THAN:
        return value is not None and value < want
    if op == F.OPERATOR_LESS_THAN_EQUAL:
        return value is not None and value <= want
    if op == F.OPERATOR_GREATER_THAN:
        return value is not None and value > want
    if op == F.OPERATOR_CONTAINS_ANY:
        return bool(set(value or []) & set(want if isinstance(want, list) else [want]))
    raise NotImplementedError(f"filter operator {op} is not modelled by the double")


def _value(v: Any) -> properties_pb2.Value:
    if isinstance(v, bool):
        return properties_pb2.Value(bool_value=v)
    if isinstance(v, int | float) and float(v).is_integer():
        return properties_pb2.Value(int_value=int(v))
    if isinstance(v, float):
        return properties_pb2.Value(number_value=v)
    if isinstance(v, list):
        return properties_pb2.Value(list_value=properties_pb2.ListValue(
            text_values=properties_pb2.TextValues(values=[str(x) for x in v])))
    return properties_pb2.Value(text_value=str(v))


_WORD = re.compile(r"\w+", re.UNICODE)


def _bm25(query: str, objs: list[tuple[str, dict[str, Any]]], fields: list[str]) -> list[tuple[str, float]]:
    """BM25F: per-property boosts (`name^2`) weigh term frequencies and lengths; k1 1.2, b 0.75."""
    weights = {f.split("^")[0]: float(f.split("^")[1]) if "^" in f else 1.0 for f in fields}
    terms = [t.lower() for t in _WORD.findall(query)]
    bags = {u: [(t.lower(), w) for f, w in weights.items() for t in _WORD.findall(str(p.get(f) or ""))]
            for u, p in objs}
    if not bags or not terms:
        return []
    lengths = {u: sum(w for _, w in bag) for u, bag in bags.items()}
    avg = sum(lengths.values()) / len(lengths) or 1.0
    scores = {}
    for u, bag in bags.items():
        s = 0.0
        for t in set(terms):
            tf = sum(w for word, w in bag if word == t)
            if tf:
                df = sum(1 for b in bags.values() if any(word == t for word, _ in b))
                idf = math.log(1 + (len(bags) - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * lengths[u] / avg))
        if s > 0:
            scores[u] = s
    return sorted(scores.items(), key=lambda kv: -kv[1])


class Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, store: Store) -> None:
        self.s = store

    def _maybe_fail(self, context: Any) -> None:
        if self.s.fail_with is not None:
            context.abort(self.s.fail_with, f"scripted failure: {self.s.fail_with.name}")

    def _tenant(self, collection: str, tenant: str, context: Any, create: bool = False) -> dict[str, Any]:
        tenants = self.s.data.setdefault(collection, {})
        if tenant not in tenants:
            if not create:  # the server returns a plain Go error here, which gRPC sends as UNKNOWN
                context.abort(grpc.StatusCode.UNKNOWN, f'tenant not found: "{tenant}"')
            tenants[tenant] = {}
        return tenants[tenant]

    def BatchObjects(self, request: Any, context: Any) -> Any:
        self._maybe_fail(context)
        errors = []
        with self.s.lock:
            for i, obj in enumerate(request.objects):
                dims = self.s.dims(obj.collection)
                vectors = {v.name: _vector(v.vector_bytes) for v in obj.vectors}
                bad = [n for n, v in vectors.items() if dims.setdefault(n, len(v)) != len(v)]
                if bad:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(
                        index=i, error=f"new node has a vector with length {len(vectors[bad[0]])}. "
                                       f"Existing nodes have vectors with length {dims[bad[0]]}"))
                    continue
                self._tenant(obj.collection, obj.tenant, context, create=True)[obj.uuid] = {
                    "props": _props(obj), "vectors": vectors}
            self.s.save()
        return batch_pb2.BatchObjectsReply(took=0.001, errors=errors)

    def BatchDelete(self, request: Any, context: Any) -> Any:
        self._maybe_fail(context)
        with self.s.lock:
            objs = self._tenant(request.collection, request.tenant, context)
            gone = [u for u, o in objs.items() if _match(request.filters, o["props"])]
            for u in gone:
                del objs[u]
            self.s.save()
        return batch_delete_pb2.BatchDeleteReply(took=0.001, matches=len(gone), successful=len(gone))

    def Search(self, request: Any, context: Any) -> Any:
        self._maybe_fail(context)
        with self.s.lock:
            objs = dict(self._tenant(request.collection, request.tenant, context))
        kept = [(u, o) for u, o in objs.items()
                if not request.HasField("filters") or _match(request.filters, o["props"])]
        limit = request.limit or 10
        if request.HasField("near_vector"):
            nv = request.near_vector
            vec = next((_vector(v.vector_bytes) for v in nv.vectors), None)
            if vec is None:
                vec = _vector(nv.vector_bytes)
            target = (list(nv.targets.target_vectors) or list(nv.target_vectors) or [None])[0]
            sims = []
            for u, o in kept:
                v = o["vectors"].get(target) if target else next(iter(o["vectors"].values()), None)
                if v is not None:
                    sims.append((u, float(np.dot(v, vec) / (np.linalg.norm(v) * np.linalg.norm(vec) or 1))))
            sims.sort(key=lambda x: (-x[1], x[0]))
            return self._reply(objs, request, [(u, 1.0 - sim) for u, sim in sims[:limit]], distance=True)
        elif request.HasField("bm25_search"):
            b = request.bm25_search
            ranked = _bm25(b.query, [(u, o["props"]) for u, o in kept], list(b.properties))[:limit]
        else:
            ranked = [(u, 0.0) for u, _ in sorted(kept, key=lambda x: x[0])][:limit]
        return self._reply(objs, request, ranked)

    def _reply(self, objs: dict[str, Any], request: Any, ranked: list[tuple[str, float]],
               distance: bool = False) -> Any:
        results = []
        for u, score in ranked:
            props = objs[u]["props"]
            names = list(request.properties.non_ref_properties) or list(props)
            results.append(search_get_pb2.SearchResult(
                properties=search_get_pb2.PropertiesResult(non_ref_props=properties_pb2.Properties(
                    fields={n: _value(props[n]) for n in names if n in props})),
                metadata=search_get_pb2.MetadataResult(
                    id=u, id_as_bytes=uuid.UUID(u).bytes, score=0.0 if distance else score,
                    score_present=not distance, distance=score if distance else 0.0, distance_present=distance)))
        return search_get_pb2.SearchReply(took=0.001, results=results)

    def Aggregate(self, request: Any, context: Any) -> Any:
        self._maybe_fail(context)
        objs = self._tenant(request.collection, request.tenant, context)
        n = sum(1 for o in objs.values() if not request.HasField("filters") or _match(request.filters, o["props"]))
        return aggregate_pb2.AggregateReply(took=0.001, single_result=aggregate_pb2.AggregateReply.Single(
            objects_count=n))

    def TenantsGet(self, request: Any, context: Any) -> Any:
        names = sorted(self.s.data.get(request.collection, {}))
        return tenants_pb2.TenantsGetReply(took=0.001, tenants=[
            tenants_pb2.Tenant(name=n, activity_status=tenants_pb2.TENANT_ACTIVITY_STATUS_HOT) for n in names])


class WeaviateDouble:
    """`with WeaviateDouble() as w:` then connect to `w.url` with gRPC port `w.grpc_port`. With `state`, what it
    holds survives a restart of its process (`python -m tests.weaviate_double`)."""

    def __init__(self, state: Path | None = None, http_port: int | None = None, grpc_port: int | None = None) -> None:
        self.store = Store(state)
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> WeaviateDouble:
        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), _rest(self.store))
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(Servicer(self.store), self._grpc)
        health = grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: health_weaviate_pb2.WeaviateHealthCheckResponse(
                status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING),
            request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
            response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString)
        self._grpc.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("grpc.health.v1.Health",
                                                                                   {"Check": health})])
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._grpc.stop(0)
        self._http.shutdown()
        self._http.server_close()


def main() -> None:
    """The double as a process of its own, to stop and restart under a client: until SIGTERM."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with WeaviateDouble(args.state, args.http_port, args.grpc_port):
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()

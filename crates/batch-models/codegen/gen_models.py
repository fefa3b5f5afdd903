#!/usr/bin/env python3
"""Generate the serde models of shipyard-batch-models from the Batch Swagger spec.

Usage (from the repository root):

    python3 crates/batch-models/codegen/gen_models.py [path/to/BatchService.json]
    cargo fmt -p shipyard-batch-models

Writes one Rust file per resource group into crates/batch-models/src/ (the files named in
GROUPS below); hand-written code (the enum macro, constructors, redaction helpers) lives in
lib.rs, enum_macro.rs, redact.rs, builders.rs and secret.rs, and is not touched.

Rules applied:
* every definition becomes a struct (objects) or a `batch_enum!` enum (string enums, named by
  `x-ms-enum.name`, including inline enums of properties);
* `#[serde(rename_all = "camelCase")]`, plus an explicit `rename` where the snake_case field name
  does not map back to the spec's spelling (e.g. `nodeAgentSKUId`, `odata.nextLink`);
* required properties are plain fields, optional ones `Option<T>` skipped when `None`;
* `Default` is derived when every required field has a default; fields holding secrets get a
  hand-rolled `Debug` that redacts them (URLs keep everything but their query string).
"""

import json
import os
import re
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DEFAULT_SPEC = os.path.join(ROOT, "crates", "batch-spec", "spec", "BatchService.json")
OUT_DIR = os.path.join(ROOT, "crates", "batch-models", "src")

# (module, doc) in output order; assignment rules are in group_of().
GROUPS = [
    ("error", "The error body returned with every non-2xx Batch response."),
    ("pool", "Pools: creation, properties, VM configuration, networking, autoscale and resize."),
    ("job", "Jobs: creation, properties, pool selection, constraints and job-level tasks."),
    ("task", "Tasks: creation (single and collections), properties, subtasks and exit conditions."),
    ("node", "Compute nodes: properties, users, scheduling and maintenance operations."),
    ("file", "Files on compute nodes and in task directories."),
    ("schedule", "Job schedules."),
    ("certificate", "Certificates (deprecated by the service, kept for completeness)."),
    ("account", "Account-level listings: applications, supported images, node counts, usage."),
    ("common", "Types shared by pools, jobs and tasks."),
]

NAME_RULES = [
    ("error", r"^(BatchError|ErrorMessage|BatchErrorDetail)$"),
    ("file", r"^(NodeFile|NodeFileListResult|FileProperties)$"),
    ("certificate", r"^(Certificate|CertificateAddParameter|CertificateListResult|CertificateState|CertificateFormat|DeleteCertificateError)$"),
    ("schedule", r"^(JobSchedule.*|CloudJobSchedule.*|Schedule|RecentJob|JobSpecification)$"),
    ("account", r"^(Application.*|AccountList.*|ImageInformation|OSType|VerificationType|PoolNodeCounts.*|NodeCounts|PoolUsageMetrics|PoolListUsageMetricsResult)$"),
    ("pool", r"^(ResizeError|AllocationState|PoolState|ComputeNodeFillType|ComputeNodeDeallocationOption|NodeRemoveParameter|WindowsConfiguration|TaskSchedulingPolicy|NodeCommunicationMode|NodePlacement.*)$"),
    ("job", r"^(DisableJobOption)$"),
    ("task", r"^(Task.*|CloudTask.*|Subtask.*|ExitCode.*|ExitOptions|ExitConditions|JobAction|DependencyAction|OutputFile.*|HttpHeader|MultiInstanceSettings|AffinityInformation|ContainerHostBatchBindMountEntry|ContainerHostDataPath|ContainerWorkingDirectory|ComputeNodeInformation)$"),
    ("job", r"^(Job.*|CloudJob.*|PoolInformation|AutoPoolSpecification|PoolLifetimeOption|OnAllTasksComplete|OnTaskFailure|ErrorCategory|JobPreparationAndReleaseTaskExecutionInformation)$"),
    ("node", r"^(ComputeNode(?!Identity).*|Node(?!Placement|Counts|Communication).*|StartTaskInformation|StartTaskState|InboundEndpoint.*|SchedulingState|ComputeNodeState|ImageInformation|VMExtensionInstanceView|InstanceViewStatus|StatusLevelTypes|UploadBatchServiceLogs.*|ComputeNodeError|ComputeNodeEndpointConfiguration|VirtualMachineInfo|NodeAgentInformation|NodeVMExtension.*|ComputeNodeDeallocationOption)$"),
    ("common", r"^(ResourceFile|EnvironmentSetting|MetadataItem|UserIdentity|AutoUserSpecification|AutoUserScope|ElevationLevel|ContainerRegistry|ComputeNodeIdentityReference|NameValuePair|ApplicationPackageReference|CertificateReference|CertificateStoreLocation|CertificateVisibility|LinuxUserConfiguration|WindowsUserConfiguration|LoginMode|UserAccount|StartTask|TaskContainerSettings|TaskConstraints|ErrorCategory|AuthenticationTokenSettings|AccessScope|UsageStatistics|ResourceStatistics)$"),
]

# Enums given a Default (the service's documented default), so structs holding them can derive
# Default.
ENUM_DEFAULTS = {
    "ContainerType": "dockerCompatible",
    "ComputeNodeFillType": "spread",
    "OnAllTasksComplete": "noaction",
    "OnTaskFailure": "noaction",
    "OutputFileUploadCondition": "taskcompletion",
    "PoolLifetimeOption": "job",
}

# Fields whose values are secrets: (definition or "*", property) -> "secret" | "url".
SECRETS = {
    ("*", "password"): "secret",
    ("*", "accountKey"): "secret",
    ("*", "protectedSettings"): "secret",
    ("*", "sshPrivateKey"): "secret",
    ("*", "sasKey"): "secret",
    ("CertificateAddParameter", "data"): "secret",
    # Environment values routinely carry keys and tokens (shipyard's own per-job SSH key travels
    # in a job preparation task's environment): Debug shows only whether a value is set.
    ("EnvironmentSetting", "value"): "secret",
    ("ResourceFile", "httpUrl"): "url",
    ("ResourceFile", "storageContainerUrl"): "url",
    ("OutputFileBlobContainerDestination", "containerUrl"): "url",
    ("UploadBatchServiceLogsConfiguration", "containerUrl"): "url",
    ("AzureFileShareConfiguration", "azureFileUrl"): "url",
}

ODATA_METADATA = {
    "type": "string",
    "title": "The OData metadata URL of the response",
    "description": "Sent by the service but not described by the spec; absent in requests.",
}

RUST_KEYWORDS = {
    "type", "match", "ref", "self", "static", "struct", "trait", "use", "where", "async", "await",
    "move", "loop", "in", "impl", "fn", "for", "if", "else", "enum", "const", "crate", "mod", "pub",
}


# Spellings whose capitals do not start words: readIOGiB -> read_io_gib, eTag -> etag.
SNAKE_TOKENS = [("GiB", "Gib"), ("IOps", "Iops"), ("VNet", "Vnet")]
SNAKE_NAMES = {"eTag": "etag"}


def to_snake(name):
    if name in SNAKE_NAMES:
        return SNAKE_NAMES[name]
    name = name.replace(".", "_")
    for token, replacement in SNAKE_TOKENS:
        name = name.replace(token, replacement)
    out = []
    for i, c in enumerate(name):
        if c.isupper():
            prev = name[i - 1] if i else ""
            nxt = name[i + 1] if i + 1 < len(name) else ""
            if i and (prev.islower() or prev.isdigit() or (prev.isupper() and nxt.islower())):
                if out and out[-1] != "_":
                    out.append("_")
            out.append(c.lower())
        else:
            out.append(c)
    return "".join(out)


def serde_camel(snake):
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def to_pascal(name):
    snake = to_snake(name)
    return "".join(p[:1].upper() + p[1:] for p in snake.split("_") if p)


def doc_text(title, description, limit=600):
    parts = []
    for t in (title, description):
        if not t:
            continue
        t = " ".join(t.split())
        if t and not t.endswith((".", "!", "?", ":")):
            t += "."
        if parts and t.lower().startswith(parts[-1].lower().rstrip(".")):
            parts[-1] = t
            continue
        parts.append(t)
    text = "\n\n".join(parts)
    if len(text) > limit:
        cut = text.rfind(". ", 0, limit)
        text = text[: cut + 1] if cut > 0 else text[:limit] + "…"
    # Markdown-escape the prose; URLs become autolinks (`<https://…>`) and stay verbatim.
    out = []
    pos = 0
    for m in re.finditer(r"https?://[^\s<>\"')\]]+", text):
        out.append(escape_md(text[pos : m.start()]))
        url = m.group(0).rstrip(".,;:")
        out.append(f"<{url}>")
        pos = m.start() + len(url)
    out.append(escape_md(text[pos:]))
    return "".join(out)


def escape_md(text):
    text = text.replace("\\", "\\\\")
    for ch in "[]<>*_`":
        text = text.replace(ch, "\\" + ch)
    return text


def doc_lines(text, indent=""):
    if not text:
        return []
    lines = []
    for para in text.split("\n\n"):
        if lines:
            lines.append(indent + "///")
        for line in textwrap.wrap(para, 92 - len(indent), break_long_words=False, break_on_hyphens=False):
            lines.append(f"{indent}/// {line}")
    return lines


class Gen:
    def __init__(self, spec):
        self.spec = spec
        self.defs = spec["definitions"]
        self.enums = {}  # name -> (values [(value, variant, doc)], doc, default)
        self.structs = {}  # name -> definition
        self.module = {}  # type name -> module
        for name, d in self.defs.items():
            if "odata.nextLink" in d.get("properties", {}) or name == "BatchError":
                # The service sends `odata.metadata` with list pages and error bodies; the spec
                # does not describe it. Keep it so those bodies re-serialize unchanged.
                d["properties"] = {"odata.metadata": ODATA_METADATA, **d["properties"]}
            if "enum" in d:
                self.add_enum(d, name)
            else:
                self.structs[name] = d
                for prop in d.get("properties", {}).values():
                    if "enum" in prop:
                        self.add_enum(prop, None)
                    elif prop.get("type") == "array" and "enum" in prop.get("items", {}):
                        self.add_enum(prop["items"], None)
        self.default_ok = {}

    def add_enum(self, schema, def_name):
        xe = schema.get("x-ms-enum", {})
        name = xe.get("name") or def_name
        if not name:
            raise SystemExit(f"inline enum without x-ms-enum name: {schema}")
        descs = {v["value"]: v for v in xe.get("values", [])}
        values = []
        for value in schema["enum"]:
            meta = descs.get(value, {})
            variant = to_pascal(meta.get("name") or value)
            if variant == "Unknown":
                # `Unknown(String)` is the fallback for values the models do not know.
                variant = "StateUnknown"
            values.append((value, variant, doc_text(None, meta.get("description"))))
        doc = doc_text(schema.get("title"), schema.get("description"))
        if name in self.enums:
            old = self.enums[name]
            if [v[0] for v in old[0]] != [v[0] for v in values]:
                raise SystemExit(f"enum {name} defined twice with different values")
            return
        self.enums[name] = (values, doc, ENUM_DEFAULTS.get(name))

    def enum_name(self, schema):
        return schema.get("x-ms-enum", {}).get("name")

    def rust_type(self, schema):
        if "$ref" in schema:
            return schema["$ref"].split("/")[-1]
        if "enum" in schema:
            return self.enum_name(schema)
        t = schema.get("type")
        fmt = schema.get("format")
        if t == "string":
            return "String"
        if t == "integer":
            return "i64" if fmt == "int64" else "i32"
        if t == "number":
            return "f64"
        if t == "boolean":
            return "bool"
        if t == "array":
            return f"Vec<{self.rust_type(schema['items'])}>"
        if t == "object":
            add = schema.get("additionalProperties")
            if isinstance(add, dict) and "properties" not in schema:
                return f"BTreeMap<String, {self.rust_type(add)}>"
            return "serde_json::Value"
        raise SystemExit(f"unsupported schema {schema}")

    def has_default(self, ty, stack=()):
        if ty in ("String", "i32", "i64", "f64", "bool", "serde_json::Value") or ty.startswith(("Vec<", "BTreeMap<", "Option<")):
            return True
        if ty in self.enums:
            return self.enums[ty][2] is not None
        if ty in self.default_ok:
            return self.default_ok[ty]
        if ty in stack:
            return True
        d = self.structs[ty]
        ok = all(
            self.has_default(self.rust_type(d["properties"][p]), stack + (ty,))
            for p in d.get("required", [])
        )
        self.default_ok[ty] = ok
        return ok

    def group_of(self, name):
        for group, rule in NAME_RULES:
            if re.match(rule, name):
                return group
        if re.match(r"^(Pool|CloudPool|.*Pool.*|VirtualMachine|VM|Image|Container|Network|.*Disk|OSDisk|Mount|.*MountConfiguration|Security|Upgrade|AutoScale|Rolling|ServiceArtifact|Public|Inbound|Diff|.*Identity|Caching|StorageAccount|IPAddress|DynamicVNet|NodePlacement|NodeCommunication|Automatic|.*Extension|Ephemeral|Managed|UefiSettings|Encryption|Disk|Target)", name):
            return "pool"
        return "common"

    # ---------------------------------------------------------------- rendering

    def render_enum(self, name):
        values, doc, default = self.enums[name]
        lines = doc_lines(doc or f"The `{name}` values of the Batch API.")
        lines.append("pub enum " + name + " {")
        for value, variant, vdoc in values:
            lines += doc_lines(vdoc or f"`{value}`", "    ")
            lines.append(f"    {variant} = \"{value}\",")
        lines.append("}")
        text = "batch_enum! {\n" + "\n".join("    " + l if l else l for l in lines) + "\n}\n"
        if default:
            variant = next(v for val, v, _ in values if val == default)
            text += (
                f"\n/// The service's default.\nimpl Default for {name} {{\n"
                f"    fn default() -> Self {{\n        Self::{variant}\n    }}\n}}\n"
            )
        return text

    def render_struct(self, name):
        d = self.structs[name]
        props = d.get("properties", {})
        required = set(d.get("required", []))
        derive_default = self.has_default(name)
        secret_fields = []
        out = doc_lines(doc_text(d.get("title") or name, d.get("description")))
        derives = ["Clone", "PartialEq", "Serialize", "Deserialize"]
        fields = []
        for pname, prop in props.items():
            secret = SECRETS.get((name, pname)) or SECRETS.get(("*", pname))
            field = to_snake(pname)
            ident = f"r#{field}" if field in RUST_KEYWORDS else field
            ty = self.rust_type(prop)
            fdoc = doc_text(prop.get("title"), prop.get("description"))
            flines = doc_lines(fdoc or f"`{pname}`", "    ")
            attrs = []
            if serde_camel(field) != pname:
                attrs.append(f'rename = "{pname}"')
            if pname in required:
                fty = ty
            else:
                fty = f"Option<{ty}>"
                attrs.append('skip_serializing_if = "Option::is_none"')
            if attrs:
                flines.append(f"    #[serde({', '.join(attrs)})]")
            flines.append(f"    pub {ident}: {fty},")
            fields.append("\n".join(flines))
            if secret:
                secret_fields.append((ident, pname in required, secret))
        if not secret_fields:
            derives.insert(0, "Debug")
        if derive_default:
            derives.insert(derives.index("PartialEq") + 1, "Default")
        out.append(f"#[derive({', '.join(derives)})]")
        out.append('#[serde(rename_all = "camelCase")]')
        out.append(f"pub struct {name} {{")
        out.append("\n\n".join(fields))
        out.append("}")
        text = "\n".join(out) + "\n"
        if secret_fields:
            text += self.render_redacting_debug(name, props, secret_fields)
        return text

    def render_redacting_debug(self, name, props, secret_fields):
        secret = {ident: (req, kind) for ident, req, kind in secret_fields}
        lines = [
            f"impl fmt::Debug for {name} {{",
            "    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {",
            f'        f.debug_struct("{name}")',
        ]
        for pname in props:
            field = to_snake(pname)
            ident = f"r#{field}" if field in RUST_KEYWORDS else field
            if ident in secret:
                req, kind = secret[ident]
                helper = "redact_url" if kind == "url" else "redact"
                if req:
                    expr = f"&{helper}(Some(&self.{ident}))"
                else:
                    expr = f"&{helper}(self.{ident}.as_ref())"
                lines.append(f'            .field("{field}", {expr})')
            else:
                lines.append(f'            .field("{field}", &self.{ident})')
        lines += ["            .finish()", "    }", "}", ""]
        return "\n".join(lines)

    def generate(self):
        modules = {g: [] for g, _ in GROUPS}
        for name in self.enums:
            modules[self.group_of(name)].append(("enum", name))
        for name in self.structs:
            modules[self.group_of(name)].append(("struct", name))
        files = {}
        for group, gdoc in GROUPS:
            items = sorted(modules[group], key=lambda x: (x[0] != "struct", x[1]))
            if not items:
                continue
            body = []
            uses_map = False
            uses_fmt = False
            for kind, name in items:
                text = self.render_struct(name) if kind == "struct" else self.render_enum(name)
                uses_map |= "BTreeMap<" in text
                uses_fmt |= "fmt::Debug for" in text
                body.append(text)
            header = [
                "// @generated by crates/batch-models/codegen/gen_models.py from BatchService.json",
                f"// (api-version {self.spec['info']['version']}). Do not edit by hand: change the",
                "// generator and re-run it, then `cargo fmt -p shipyard-batch-models`.",
                "",
                f"//! {gdoc}",
                "",
            ]
            if uses_map:
                header.append("use std::collections::BTreeMap;")
            if uses_fmt:
                header.append("use std::fmt;")
            if uses_map or uses_fmt:
                header.append("")
            header.append("use serde::{Deserialize, Serialize};")
            header.append("")
            header.append("#[allow(unused_imports)]")
            header.append("use super::enum_macro::batch_enum;")
            header.append("#[allow(unused_imports)]")
            header.append("use super::*;")
            helpers = [h for h in ("redact", "redact_url") if f"&{h}(" in "".join(body)]
            if len(helpers) == 1:
                header.append(f"use super::redact::{helpers[0]};")
            elif helpers:
                header.append("use super::redact::{" + ", ".join(helpers) + "};")
            header.append("")
            files[group] = "\n".join(header) + "\n" + "\n".join(body)
        return files


def main():
    spec_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SPEC
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    gen = Gen(spec)
    files = gen.generate()
    for group, text in files.items():
        with open(os.path.join(OUT_DIR, f"{group}.rs"), "w", encoding="utf-8") as f:
            f.write(text)
    counts = {g: t.count("pub struct ") + t.count("pub enum ") for g, t in files.items()}
    print(f"wrote {sum(counts.values())} types: {counts}")
    print("modules:", " ".join(files))


if __name__ == "__main__":
    main()

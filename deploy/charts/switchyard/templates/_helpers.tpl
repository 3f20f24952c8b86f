{{/*
Names, labels and the flag routing of the Switchyard chart. Every object of a release is named
from "switchyard.fullname" (<release>-epp, the Service name upstream's chart uses for its EPP).
*/}}

{{- define "switchyard.fullname" -}}
{{- printf "%s-%s" (.Release.Name | trunc 40 | trimSuffix "-") (.Values.nameOverride | default "epp") | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.poolName" -}}
{{- .Values.inferencePool.name | default .Release.Name -}}
{{- end -}}

{{- define "switchyard.etcdName" -}}
{{- printf "%s-etcd" (include "switchyard.fullname" .) -}}
{{- end -}}

{{- define "switchyard.configMapName" -}}
{{- printf "%s-config" (include "switchyard.fullname" .) -}}
{{- end -}}

{{/* The ServiceAccount of the roles that read the Kubernetes API (standalone, aggregator). */}}
{{- define "switchyard.discoveryServiceAccount" -}}
{{- include "switchyard.fullname" . -}}
{{- end -}}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "picker"). */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchyard.labels" -}}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end -}}

{{/*
Where each flag of inferenceExtension.flags goes in mode distributed: the roles whose command
line accepts it (docs/install.md has the same table). Standalone takes every flag.
*/}}
{{- define "switchyard.flagRoles" -}}
v: [aggregator, picker, scraper]
zap-encoder: [aggregator, picker, scraper]
tracing: [aggregator, picker, scraper]
total-queued-requests-metric: [aggregator, scraper]
total-running-requests-metric: [aggregator, scraper]
kv-cache-usage-percentage-metric: [aggregator, scraper]
lora-info-metric: [aggregator, scraper]
cache-info-metric: [aggregator, scraper]
model-server-metrics-scheme: [aggregator, scraper]
model-server-metrics-path: [aggregator, scraper]
model-server-metrics-port: [aggregator]
model-server-metrics-https-insecure-skip-verify: [aggregator, scraper]
refresh-metrics-interval: [aggregator, scraper]
disable-endpoint-subset-filter: [picker]
max-request-body-bytes: [picker]
max-header-bytes: [picker]
max-request-header-bytes: [picker]
max-request-headers: [picker]
max-pending-header-bytes: [picker]
request-body-timeout: [picker]
handshake-timeout: [aggregator, picker]
metrics-staleness-threshold: [picker]
inference-objective: [picker]
seed: [picker]
kubeconfig: [aggregator]
{{- end -}}

{{/*
Flags the chart sets from its own values: a user flag of this name is an error naming the value
to use instead (a second --grpc-port would leave probes and Services on the wrong port).
*/}}
{{- define "switchyard.ownedFlags" -}}
grpc-port: inferenceExtension.extProcPort
grpc-health-port: inferenceExtension.grpcHealthPort / aggregator.grpcHealthPort
metrics-port: inferenceExtension.metricsPort / aggregator.metricsPort / scraper.metricsPort
control-port: aggregator.controlPort
config-file: inferenceExtension.pluginsConfigFile
config-text: inferenceExtension.pluginsCustomConfig
secure-serving: inferenceExtension.secureServing
cert-path: inferenceExtension.tls.secretName
enable-cert-reload: inferenceExtension.tls.secretName
pool-name: inferencePool.name
pool-namespace: the release namespace
pool-group: inferencePool (always inference.networking.k8s.io)
endpoint-selector: inferencePool.endpointSelector
endpoint-target-ports: inferencePool.targetPorts
endpoints-file: inferencePool (the chart discovers pods through Kubernetes)
etcd-endpoints: etcd.endpoints / etcd.deploy
etcd-user: etcd.auth.secretName
etcd-password: etcd.auth.secretName
etcd-ca-file: etcd.tls
etcd-cert-file: etcd.tls
etcd-key-file: etcd.tls
etcd-tls: etcd.tls.enabled
election-name: etcd.electionName
lease-ttl: etcd.leaseTTL
advertise-address: aggregator.controlPort (the pod IP is used)
control-plane-cert: controlPlane.tls.secretName
control-plane-key: controlPlane.tls.secretName
control-plane-ca: controlPlane.tls.secretName
control-plane-server-name: controlPlane.tls.serverName
control-plane-tls-require: controlPlane.tls.require
aggregators: etcd (pickers and scrapers find the leader through the election)
remote-scrapers: scraper.enabled
scraper-id: scraper (the pod name is used)
listen-host: nothing (the roles listen on every pod address)
check-config: nothing (a dry run, not a serving option)
{{- end -}}

{{/* One flag value as text: numbers without exponent, null as "" (an empty value disables a metric). */}}
{{- define "switchyard.flagValue" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else if kindIs "invalid" . -}}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/*
inferenceExtension.flags as a JSON list of {name, value}, from either form (map or list of
{name, value}), after refusing the flags the chart owns.
*/}}
{{- define "switchyard.userFlags" -}}
{{- $flags := .Values.inferenceExtension.flags | default dict -}}
{{- $out := list -}}
{{- if kindIs "slice" $flags -}}
{{- range $flags -}}{{- $out = append $out (dict "name" .name "value" (include "switchyard.flagValue" .value)) -}}{{- end -}}
{{- else -}}
{{- range $name, $value := $flags -}}{{- $out = append $out (dict "name" $name "value" (include "switchyard.flagValue" $value)) -}}{{- end -}}
{{- end -}}
{{- $owned := include "switchyard.ownedFlags" . | fromYaml -}}
{{- range $out -}}
{{- if eq .name "ha-enable-leader-election" -}}
{{- fail "inferenceExtension.flags: Switchyard refuses --ha-enable-leader-election; high availability is mode: distributed (aggregators elected through etcd)" -}}
{{- else if hasKey $owned .name -}}
{{- fail (printf "inferenceExtension.flags: the chart sets --%s itself; use %s" .name (get $owned .name)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The args of one role: the chart's flags, then the user flags that role accepts. A user flag the
chart also sets (--v, --zap-encoder, --tracing) replaces the chart's. Call with
(dict "ctx" $ "role" "picker" "flags" (list "--a=b" ...) "defaults" (dict "tracing" "false")).
*/}}
{{- define "switchyard.args" -}}
{{- $ctx := .ctx -}}
{{- $role := .role -}}
{{- $table := include "switchyard.flagRoles" $ctx | fromYaml -}}
{{- $user := include "switchyard.userFlags" $ctx | fromJsonArray -}}
{{- $mine := list -}}
{{- $names := dict -}}
{{- range $user -}}
{{- if eq $role "standalone" -}}
{{- $mine = append $mine . -}}
{{- else if hasKey $table .name -}}
{{- if has $role (get $table .name) -}}{{- $mine = append $mine . -}}{{- end -}}
{{- else -}}
{{- fail (printf "inferenceExtension.flags: the chart does not know which distributed role takes --%s (known: %s); in mode standalone every flag is passed through" .name (keys $table | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- range $mine -}}{{- $_ := set $names .name true -}}{{- end -}}
- {{ $role }}
{{- range .flags }}
- {{ . | quote }}
{{- end }}
{{- range $name := keys .defaults | sortAlpha }}
{{- if not (hasKey $names $name) }}
- {{ printf "--%s=%s" $name (get $.defaults $name) | quote }}
{{- end }}
{{- end }}
{{- range $mine }}
- {{ printf "--%s=%s" .name .value | quote }}
{{- end }}
{{- end -}}

{{/* The etcd flags of the distributed roles. */}}
{{- define "switchyard.etcdFlags" -}}
{{- $e := .Values.etcd -}}
{{- $endpoints := list -}}
{{- if $e.deploy -}}
{{- if or $e.tls.enabled $e.auth.secretName -}}
{{- fail "etcd.tls and etcd.auth describe an external etcd (etcd.endpoints); the in-chart etcd (etcd.deploy) is plaintext without auth" -}}
{{- end -}}
{{- $name := include "switchyard.etcdName" . -}}
{{- range $i := until (int $e.replicas) -}}
{{- $endpoints = append $endpoints (printf "http://%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- else -}}
{{- $endpoints = $e.endpoints -}}
{{- if not $endpoints -}}{{- fail "mode distributed needs etcd: set etcd.endpoints, or etcd.deploy: true for an in-chart etcd" -}}{{- end -}}
{{- end -}}
{{- $flags := list (printf "--etcd-endpoints=%s" (join "," $endpoints)) -}}
{{- $flags = append $flags (printf "--election-name=%s" ($e.electionName | default (printf "switchyard/%s/%s" .Release.Namespace (include "switchyard.poolName" .)))) -}}
{{- $flags = append $flags (printf "--lease-ttl=%s" $e.leaseTTL) -}}
{{- if and $e.tls.enabled (not $e.deploy) -}}
{{- $flags = append $flags "--etcd-tls" -}}
{{- $flags = append $flags "--etcd-ca-file=/etc/switchyard/etcd-tls/ca.crt" -}}
{{- if $e.tls.clientCert -}}
{{- $flags = append $flags "--etcd-cert-file=/etc/switchyard/etcd-tls/tls.crt" -}}
{{- $flags = append $flags "--etcd-key-file=/etc/switchyard/etcd-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- toJson $flags -}}
{{- end -}}

{{/* Pool discovery flags (standalone and aggregator: the only roles that read the Kubernetes API). */}}
{{- define "switchyard.poolFlags" -}}
{{- $p := .Values.inferencePool -}}
{{- $flags := list -}}
{{- if $p.endpointSelector -}}
{{- $labels := list -}}
{{- range $k, $v := $p.modelServers.matchLabels -}}{{- $labels = append $labels (printf "%s=%s" $k $v) -}}{{- end -}}
{{- $ports := list -}}
{{- range $p.targetPorts -}}{{- $ports = append $ports (int .number | toString) -}}{{- end -}}
{{- $flags = append $flags (printf "--endpoint-selector=%s" (join "," $labels)) -}}
{{- $flags = append $flags (printf "--endpoint-target-ports=%s" (join "," $ports)) -}}
{{- $flags = append $flags (printf "--pool-namespace=%s" .Release.Namespace) -}}
{{- else -}}
{{- $flags = append $flags (printf "--pool-name=%s" (include "switchyard.poolName" .)) -}}
{{- $flags = append $flags (printf "--pool-namespace=%s" .Release.Namespace) -}}
{{- $flags = append $flags "--pool-group=inference.networking.k8s.io" -}}
{{- end -}}
{{- toJson $flags -}}
{{- end -}}

{{/* Flags every role gets from the chart, as defaults a user flag may replace. */}}
{{- define "switchyard.defaultFlags" -}}
{{- toJson (dict "zap-encoder" .Values.inferenceExtension.logEncoder "tracing" (toString .Values.inferenceExtension.tracing.enabled)) -}}
{{- end -}}

{{/* ext-proc serving flags (standalone and picker). */}}
{{- define "switchyard.serveFlags" -}}
{{- $x := .Values.inferenceExtension -}}
{{- $flags := list (printf "--grpc-port=%d" (int $x.extProcPort)) (printf "--grpc-health-port=%d" (int $x.grpcHealthPort)) (printf "--metrics-port=%d" (int $x.metricsPort)) -}}
{{- $flags = append $flags (printf "--secure-serving=%t" $x.secureServing) -}}
{{- if and $x.secureServing $x.tls.secretName -}}
{{- $flags = append $flags "--cert-path=/etc/switchyard/tls" -}}
{{- $flags = append $flags "--enable-cert-reload" -}}
{{- end -}}
{{- toJson $flags -}}
{{- end -}}

{{/* Environment every Switchyard container gets (the downward API values args refer to). */}}
{{- define "switchyard.env" -}}
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- with .Values.inferenceExtension.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The runtime's worker threads from the container's CPU request, rounded up (the downward API
     rounds CPU up with divisor 1). Without it the runtime sizes itself by the node's cores: 64
     workers on a 64-core node, each woken and parked again per message at light load. Only
     when the role requests CPU (an unset request would read as 0). Takes the role's resources. */}}
{{- define "switchyard.workerThreadsEnv" -}}
{{- if and .requests .requests.cpu }}
- name: TOKIO_WORKER_THREADS
  valueFrom:
    resourceFieldRef:
      resource: requests.cpu
      divisor: "1"
{{- end }}
{{- end -}}

{{/* etcd credentials for the distributed roles (read by the binary from ETCD_USER / ETCD_PASSWORD). */}}
{{- define "switchyard.etcdEnv" -}}
{{- $a := .Values.etcd.auth -}}
{{- if and $a.secretName (not .Values.etcd.deploy) }}
- name: ETCD_USER
  valueFrom:
    secretKeyRef:
      name: {{ $a.secretName }}
      key: {{ $a.userKey }}
- name: ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $a.secretName }}
      key: {{ $a.passwordKey }}
{{- end }}
{{- end -}}

{{/*
Control-plane TLS flags of one distributed role; call with (dict "ctx" $ "role" "picker").
The aggregator serves with the Secret's certificate; pickers and scrapers present it and verify
the aggregator's against serverName.
*/}}
{{- define "switchyard.controlTlsFlags" -}}
{{- $t := .ctx.Values.controlPlane.tls -}}
{{- $flags := list -}}
{{- if $t.secretName -}}
{{- $flags = list "--control-plane-cert=/etc/switchyard/control-plane-tls/tls.crt" "--control-plane-key=/etc/switchyard/control-plane-tls/tls.key" "--control-plane-ca=/etc/switchyard/control-plane-tls/ca.crt" -}}
{{- if ne .role "aggregator" -}}
{{- $flags = append $flags (printf "--control-plane-server-name=%s" ($t.serverName | default (printf "%s-aggregator.%s.svc" (include "switchyard.fullname" .ctx) .ctx.Release.Namespace))) -}}
{{- end -}}
{{- if $t.require -}}{{- $flags = append $flags "--control-plane-tls-require" -}}{{- end -}}
{{- end -}}
{{- toJson $flags -}}
{{- end -}}

{{- define "switchyard.controlTlsMount" -}}
{{- if .Values.controlPlane.tls.secretName }}
- name: control-plane-tls
  mountPath: /etc/switchyard/control-plane-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switchyard.controlTlsVolume" -}}
{{- with .Values.controlPlane.tls.secretName }}
- name: control-plane-tls
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{- define "switchyard.etcdVolumeMounts" -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.deploy) }}
- name: etcd-tls
  mountPath: /etc/switchyard/etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switchyard.etcdVolumes" -}}
{{- $t := .Values.etcd.tls -}}
{{- if and $t.enabled (not .Values.etcd.deploy) }}
{{- if not $t.secretName }}{{ fail "etcd.tls.enabled needs etcd.tls.secretName (a Secret with ca.crt)" }}{{ end }}
- name: etcd-tls
  secret:
    secretName: {{ $t.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
      {{- if $t.clientCert }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end }}
{{- end -}}

{{/* The EndpointPickerConfig volume and mount every role gets. */}}
{{- define "switchyard.configVolume" -}}
- name: config
  configMap:
    name: {{ include "switchyard.configMapName" . }}
{{- end -}}

{{- define "switchyard.configMount" -}}
- name: config
  mountPath: /config
  readOnly: true
{{- end -}}

{{- define "switchyard.configFlag" -}}
{{- printf "--config-file=/config/%s" .Values.inferenceExtension.pluginsConfigFile -}}
{{- end -}}

{{/* Preferred spreading over nodes unless the user gave an affinity; call with (dict "ctx" $ "component" "picker" "affinity" .affinity). */}}
{{- define "switchyard.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "switchyard.selectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* gRPC probes on the health port; call with (dict "port" 9003 "ready" "readiness"). */}}
{{- define "switchyard.grpcProbes" -}}
livenessProbe:
  grpc:
    port: {{ .port }}
    service: liveness
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .ready }}
  periodSeconds: 2
  failureThreshold: 3
startupProbe:
  grpc:
    port: {{ .port }}
    service: liveness
  periodSeconds: 1
  failureThreshold: 60
{{- end -}}

{{/* The ext-proc certificate (standalone and picker), reloaded when the Secret changes. */}}
{{- define "switchyard.tlsMount" -}}
{{- $x := .Values.inferenceExtension -}}
{{- if and $x.secureServing $x.tls.secretName }}
- name: tls
  mountPath: /etc/switchyard/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switchyard.tlsVolume" -}}
{{- $x := .Values.inferenceExtension -}}
{{- if and $x.secureServing $x.tls.secretName }}
- name: tls
  secret:
    secretName: {{ $x.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{/* Pod scheduling keys; call with (dict "ctx" $ "component" "picker" "v" .Values.picker). */}}
{{- define "switchyard.scheduling" -}}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
  {{- include "switchyard.affinity" (dict "ctx" .ctx "component" .component "affinity" .v.affinity) | nindent 2 }}
{{- end -}}

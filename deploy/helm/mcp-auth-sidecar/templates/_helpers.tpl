{{/*
Named templates of the chart. The public ones, for your own chart (see README "Include the sidecar in
your own chart"), take the chart's context; from a parent chart that lists this chart as a
dependency, pass `(index .Subcharts "mcp-auth-sidecar")`:

  mcp-auth-sidecar.container       the sidecar container (one list item, indent with nindent)
  mcp-auth-sidecar.volumes         the pod volumes it needs (list items)
  mcp-auth-sidecar.podAnnotations  checksum/config and checksum/secret (map entries)
  mcp-auth-sidecar.upstream        the URL it proxies to, http://<mcpServer.host>:<mcpServer.port>

Everything else here is private to the chart.
*/}}

{{- define "mcp-auth-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-auth-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-auth-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-auth-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcp-auth-sidecar.labels" -}}
helm.sh/chart: {{ include "mcp-auth-sidecar.chart" . }}
{{ include "mcp-auth-sidecar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.redisName" -}}
{{- printf "%s-redis" (include "mcp-auth-sidecar.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "mcp-auth-sidecar.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-auth-sidecar.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcp-auth-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-auth-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.configMapName" -}}
{{- printf "%s-config" (include "mcp-auth-sidecar.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "mcp-auth-sidecar.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "mcp-auth-sidecar.fullname" . }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.image" -}}
{{- $img := .Values.sidecar.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.upstream" -}}
{{- $host := .Values.mcpServer.host }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "http://%s:%d" $host (int .Values.mcpServer.port) }}
{{- end }}

{{- define "mcp-auth-sidecar.configPath" -}}
/etc/mcp-auth-sidecar/config.yaml
{{- end }}

{{- /* Is the store Redis? "true" or "". */ -}}
{{- define "mcp-auth-sidecar.usesRedis" -}}
{{- if eq (toString .Values.config.store) "redis" }}true{{ end }}
{{- end }}

{{- define "mcp-auth-sidecar.bundledRedis" -}}
{{- if and (include "mcp-auth-sidecar.usesRedis" .) (eq .Values.redis.type "bundled") }}true{{ end }}
{{- end }}

{{- /* The chart-created Secret's data (only keys with a value), as a YAML map. */ -}}
{{- define "mcp-auth-sidecar.secretData" -}}
{{- $s := .Values.secrets }}
{{- $data := dict }}
{{- if $s.encryptionKeys }}{{ $_ := set $data $s.keys.encryptionKeys $s.encryptionKeys }}{{ end }}
{{- if $s.idpClientSecret }}{{ $_ := set $data $s.keys.idpClientSecret $s.idpClientSecret }}{{ end }}
{{- if $s.redisPassword }}{{ $_ := set $data $s.keys.redisPassword $s.redisPassword }}{{ end }}
{{- if $data }}{{ toYaml $data }}{{ end }}
{{- end }}

{{- /* Does the pod get secrets from a Secret at all? "true" or "". */ -}}
{{- define "mcp-auth-sidecar.hasSecret" -}}
{{- if or .Values.secrets.existingSecret (include "mcp-auth-sidecar.secretData" .) }}true{{ end }}
{{- end }}

{{- /* Is a Redis password available to the sidecar (and the bundled Redis)? "true" or "". */ -}}
{{- define "mcp-auth-sidecar.hasRedisPassword" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.redisPassword }}true{{ end }}
{{- end }}

{{/*
Refuse values that render but cannot run, each with the reason and the fix. The schema catches most
of these first; these checks also hold with --skip-schema-validation and explain themselves.
*/}}
{{- define "mcp-auth-sidecar.validate" -}}
{{- $c := .Values.config }}
{{- $broker := eq (toString $c.mode) "broker" }}
{{- if not $c.public_url }}
{{- fail "config.public_url is required: the external base URL MCP clients use, e.g. --set config.public_url=https://mcp.example.com" }}
{{- end }}
{{- if and $broker (eq (toString $c.store) "memory") }}
{{- if and .Values.deployment.enabled (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "config.store=memory keeps the broker's tokens inside one pod: with more than one replica (replicaCount > 1 or autoscaling.enabled) clients would hit pods that never saw their tokens and be logged out at random. Set config.store=redis (redis.type=bundled or external), or replicaCount=1." }}
{{- end }}
{{- if gt (int .Values.sidecar.workers) 1 }}
{{- fail "config.store=memory keeps the broker's tokens inside one process: sidecar.workers > 1 needs config.store=redis." }}
{{- end }}
{{- end }}
{{- if $broker }}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.encryptionKeys) }}
{{- fail "broker mode has no encryption key source: the sidecar stores the IdP's tokens encrypted (AES-256-GCM). Generate a key ring entry with `mcp-auth-sidecar keygen` and set secrets.encryptionKeys=<kid:key>, or set secrets.existingSecret to a Secret holding it under the key secrets.keys.encryptionKeys." }}
{{- end }}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.idpClientSecret) }}
{{- fail "broker mode needs the IdP client secret: set secrets.idpClientSecret, or secrets.existingSecret with the key secrets.keys.idpClientSecret." }}
{{- end }}
{{- if or (not $c.idp_issuer) (not $c.idp_client_id) }}
{{- fail "broker mode needs config.idp_issuer (the upstream OIDC issuer URL) and config.idp_client_id (the sidecar's client id at the IdP)." }}
{{- end }}
{{- end }}
{{- if and (include "mcp-auth-sidecar.usesRedis" .) (eq .Values.redis.type "external") }}
{{- $r := .Values.redis.external }}
{{- if and (eq $r.mode "standalone") (not $r.url) }}
{{- fail "config.store=redis with redis.type=external and redis.external.mode=standalone needs redis.external.url (redis://host:6379/0, or rediss:// for TLS); or choose redis.type=bundled." }}
{{- end }}
{{- if and (eq $r.mode "sentinel") (or (not $r.sentinels) (not $r.sentinelMaster)) }}
{{- fail "redis.external.mode=sentinel needs redis.external.sentinels (host:port list) and redis.external.sentinelMaster (the master's name)." }}
{{- end }}
{{- if and (eq $r.mode "cluster") (not $r.clusterNodes) }}
{{- fail "redis.external.mode=cluster needs redis.external.clusterNodes (host:port list of seed nodes)." }}
{{- end }}
{{- end }}
{{- $stop := addf (default 5 $c.shutdown_delay_seconds) (default 25 $c.shutdown_timeout_seconds) 2 }}
{{- if and .Values.deployment.enabled (lt (float64 .Values.terminationGracePeriodSeconds) $stop) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must cover the sidecar's graceful stop: config.shutdown_delay_seconds + config.shutdown_timeout_seconds + 2 = %v seconds; raise it or shorten those." .Values.terminationGracePeriodSeconds $stop) }}
{{- end }}
{{- if and .Values.deployment.enabled (not .Values.mcpServer.image.repository) }}
{{- fail "mcpServer.image.repository is required: the image of your MCP server (or set deployment.enabled=false and include the sidecar in your own chart)." }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes the metrics Service." }}
{{- end }}
{{- end }}

{{/*
The sidecar's config.yaml: config.* without null values, plus the settings the chart derives. No
trailing newline: checksum/config is the sha256 of this text plus one "\n", which is exactly the
ConfigMap's config.yaml.
*/}}
{{- define "mcp-auth-sidecar.configYaml" -}}
{{- $cfg := dict }}
{{- range $k, $v := .Values.config }}
{{- if not (kindIs "invalid" $v) }}{{ $_ := set $cfg $k $v }}{{ end }}
{{- end }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.sidecar.port)) }}
{{- $_ = set $cfg "metrics_listen" (printf "0.0.0.0:%d" (int .Values.sidecar.metricsPort)) }}
{{- $_ = set $cfg "upstream" (include "mcp-auth-sidecar.upstream" .) }}
{{- $_ = set $cfg "workers" (int .Values.sidecar.workers) }}
{{- if include "mcp-auth-sidecar.usesRedis" . }}
{{- if eq .Values.redis.type "bundled" }}
{{- $_ = set $cfg "redis_mode" "standalone" }}
{{- $_ = set $cfg "redis_url" (printf "redis://%s:%d/0" (include "mcp-auth-sidecar.redisName" .) (int .Values.redis.bundled.port)) }}
{{- $_ = set $cfg "redis_tls" false }}
{{- else }}
{{- $r := .Values.redis.external }}
{{- $_ = set $cfg "redis_mode" $r.mode }}
{{- $_ = set $cfg "redis_tls" $r.tls }}
{{- if eq $r.mode "standalone" }}{{ $_ = set $cfg "redis_url" $r.url }}{{ end }}
{{- if eq $r.mode "sentinel" }}
{{- $_ = set $cfg "redis_sentinels" $r.sentinels }}
{{- $_ = set $cfg "redis_sentinel_master" $r.sentinelMaster }}
{{- end }}
{{- if eq $r.mode "cluster" }}{{ $_ = set $cfg "redis_cluster_nodes" $r.clusterNodes }}{{ end }}
{{- end }}
{{- end }}
{{- toYaml $cfg | trimSuffix "\n" }}
{{- end }}

{{- define "mcp-auth-sidecar.podAnnotations" -}}
checksum/config: {{ printf "%s\n" (include "mcp-auth-sidecar.configYaml" .) | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
{{- with include "mcp-auth-sidecar.secretData" . }}
checksum/secret: {{ . | sha256sum }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mcp-auth-sidecar.secretEnv" -}}
{{- $name := include "mcp-auth-sidecar.secretName" . }}
{{- $s := .Values.secrets }}
{{- $existing := $s.existingSecret }}
{{- if or (and $existing (eq (toString .Values.config.mode) "broker")) $s.encryptionKeys }}
- name: MCP_SIDECAR_ENCRYPTION_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $s.keys.encryptionKeys }}
{{- end }}
{{- if or (and $existing (eq (toString .Values.config.mode) "broker")) $s.idpClientSecret }}
- name: MCP_SIDECAR_IDP_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $s.keys.idpClientSecret }}
{{- end }}
{{- if and (include "mcp-auth-sidecar.usesRedis" .) (or $existing $s.redisPassword) }}
- name: MCP_SIDECAR_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $s.keys.redisPassword }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/*
"true" when the sidecar runs as a Kubernetes native sidecar (an init container with restartPolicy: Always,
Kubernetes >= 1.29): sidecar.native true, or auto on a cluster that new.
*/}}
{{- define "mcp-auth-sidecar.native" -}}
{{- $n := .Values.sidecar.native }}
{{- if or (eq (toString $n) "true") (and (eq (toString $n) "auto") (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) -}}
true
{{- end }}
{{- end }}

{{/*
The sidecar as a native sidecar, one item of a pod's `initContainers:` list (Kubernetes >= 1.29): it starts
before the MCP server (the startup probe holds the next container until /healthz answers) and stops after it.

  initContainers:
    {{- include "mcp-auth-sidecar.nativeContainer" (index .Subcharts "mcp-auth-sidecar") | nindent 4 }}
*/}}
{{- define "mcp-auth-sidecar.nativeContainer" -}}
{{- include "mcp-auth-sidecar.container" . }}
  restartPolicy: Always
  startupProbe:
    httpGet:
      path: /healthz
      port: http
      scheme: HTTP
    periodSeconds: 1
    failureThreshold: 60
{{- end }}

{{/*
The sidecar container, as one item of a pod's `containers:` list:

  containers:
    {{- include "mcp-auth-sidecar.container" (index .Subcharts "mcp-auth-sidecar") | nindent 4 }}
*/}}
{{- define "mcp-auth-sidecar.container" -}}
{{- include "mcp-auth-sidecar.validate" . }}
{{- $sc := .Values.sidecar -}}
- name: {{ $sc.name }}
  image: {{ include "mcp-auth-sidecar.image" . | quote }}
  imagePullPolicy: {{ $sc.image.pullPolicy }}
  command: ["mcp-auth-sidecar"]
  args: ["serve", "--config", {{ include "mcp-auth-sidecar.configPath" . | quote }}]
  ports:
    - name: http
      containerPort: {{ int $sc.port }}
      protocol: TCP
    - name: metrics
      containerPort: {{ int $sc.metricsPort }}
      protocol: TCP
  env:
    # Lets `kubectl exec ... -- mcp-auth-sidecar check-config` find the same file.
    - name: MCP_SIDECAR_CONFIG
      value: {{ include "mcp-auth-sidecar.configPath" . | quote }}
    {{- with include "mcp-auth-sidecar.secretEnv" . }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with $sc.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $sc.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
      scheme: HTTP
    {{- toYaml $sc.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: http
      scheme: HTTP
    {{- toYaml $sc.readinessProbe | nindent 4 }}
  {{- with $sc.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $sc.securityContext | nindent 4 }}
  volumeMounts:
    - name: mcp-auth-sidecar-config
      mountPath: /etc/mcp-auth-sidecar
      readOnly: true
    - name: mcp-auth-sidecar-tmp
      mountPath: /tmp
    {{- with $sc.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The volumes the sidecar container mounts, as items of a pod's `volumes:` list.
*/}}
{{- define "mcp-auth-sidecar.volumes" -}}
- name: mcp-auth-sidecar-config
  configMap:
    name: {{ include "mcp-auth-sidecar.configMapName" . }}
    items:
      - key: config.yaml
        path: config.yaml
- name: mcp-auth-sidecar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

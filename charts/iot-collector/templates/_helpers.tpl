{{/*
Expand the name of the chart.
*/}}
{{- define "iot-collector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most: some
Kubernetes name fields are limited to that by the DNS naming spec).
*/}}
{{- define "iot-collector.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "iot-collector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "iot-collector.labels" -}}
helm.sh/chart: {{ include "iot-collector.chart" . }}
{{ include "iot-collector.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels. Every workload of the release shares them; each selector adds
app.kubernetes.io/component so the collector Services never pick the in-chart
Elasticsearch or Kibana pods.
*/}}
{{- define "iot-collector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iot-collector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "iot-collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iot-collector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The collector image reference.
*/}}
{{- define "iot-collector.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Worker processes per pod: collector.workers when set, else resources.limits.cpu
(falling back to requests) rounded up to whole cores, the same rule the
collector applies to its cgroup quota when COLLECTOR_WORKERS is unset.
*/}}
{{- define "iot-collector.workers" -}}
{{- if gt (int .Values.collector.workers) 0 }}
{{- int .Values.collector.workers }}
{{- else }}
{{- $cpu := toString (dig "limits" "cpu" (dig "requests" "cpu" "1" .Values.resources) .Values.resources) }}
{{- $milli := 0 }}
{{- if hasSuffix "m" $cpu }}
{{- $milli = trimSuffix "m" $cpu | atoi }}
{{- else }}
{{- $milli = mulf (float64 $cpu) 1000 | int }}
{{- end }}
{{- max 1 (div (add $milli 999) 1000) }}
{{- end }}
{{- end }}

{{/*
Elasticsearch URL the collector writes to.
*/}}
{{- define "iot-collector.elasticsearchUrl" -}}
{{- if .Values.store.elasticsearch.url }}
{{- .Values.store.elasticsearch.url }}
{{- else if .Values.elasticsearch.enabled }}
{{- printf "http://%s-elasticsearch:9200" (include "iot-collector.fullname" .) }}
{{- else if eq .Values.store.sink "elasticsearch" }}
{{- fail "store.elasticsearch.url is required when store.sink=elasticsearch and elasticsearch.enabled=false" }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the Elasticsearch credentials.
*/}}
{{- define "iot-collector.secretName" -}}
{{- default (include "iot-collector.fullname" .) .Values.store.elasticsearch.existingSecret }}
{{- end }}

{{/*
Whether the Prometheus Operator kinds are rendered: the cluster serves them,
or the values force them (e.g. for `helm template` without a cluster).
*/}}
{{- define "iot-collector.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
Fail unless the pod's grace period covers the preStop pause plus the drain.
*/}}
{{- define "iot-collector.assertGracePeriod" -}}
{{- $needed := addf (float64 .Values.collector.preStopSleep) (float64 .Values.collector.drainTimeout) }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed collector.preStopSleep + collector.drainTimeout (%v), or pods are killed mid-drain" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- end }}

{{/*
Pod-level security context shared by the chart's own jobs and test pod.
*/}}
{{- define "iot-collector.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
Plain CoAP is served unless auth is required (then only with auth.plain).
*/}}
{{- define "iot-collector.plain" -}}
{{- if or (not .Values.auth.required) .Values.auth.plain }}true{{- end }}
{{- end }}

{{/*
Fail rendering when auth is required but no Secret holds the PSK file.
*/}}
{{- define "iot-collector.assertAuth" -}}
{{- if and .Values.auth.required (not .Values.auth.existingSecret) }}
{{- fail "auth.required needs auth.existingSecret: the Secret holding the PSK file (key auth.secretKey)" }}
{{- end }}
{{- end }}

{{/*
The collector's workload: a StatefulSet when it has a spool (each pod its own
PersistentVolumeClaim from the volumeClaimTemplate), else a Deployment.
*/}}
{{- define "iot-collector.workloadKind" -}}
{{- if .Values.spool.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
A spool on an emptyDir is lost with its pod, acknowledged events included: render it
only when the values say so explicitly.
*/}}
{{- define "iot-collector.assertSpool" -}}
{{- if and .Values.spool.enabled (not .Values.spool.persistence.enabled) (not .Values.spool.acceptLossWithPod) }}
{{- fail "spool.enabled without spool.persistence.enabled puts the spool on an emptyDir, lost (with the events it acknowledged) when the pod goes: set spool.acceptLossWithPod=true to accept that" }}
{{- end }}
{{- end }}

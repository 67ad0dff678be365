{{/*
The chart name (app.kubernetes.io/name), at most 63 characters.
*/}}
{{- define "agent-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart>, or <release> when it already contains the chart name.
Kept to 45 characters so that every derived name (e.g. "-sidecar-injector") stays
within the 63 characters of a label or a DNS label.
*/}}
{{- define "agent-router.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
helm.sh/chart: <chart>-<version>.
*/}}
{{- define "agent-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name and instance only (immutable in a Deployment's selector).
*/}}
{{- define "agent-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels without the component: helm.sh/chart, the selector labels, version,
managed-by and part-of.
*/}}
{{- define "agent-router.commonLabels" -}}
helm.sh/chart: {{ include "agent-router.chart" . }}
{{ include "agent-router.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-router
{{- end }}

{{/*
All labels of an object of one component: include "agent-router.labels" (list . "operator")
*/}}
{{- define "agent-router.labels" -}}
{{- $root := index . 0 -}}
{{ include "agent-router.commonLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Names of the objects. */}}
{{- define "agent-router.operatorName" -}}
{{- printf "%s-operator" (include "agent-router.fullname" .) }}
{{- end }}

{{- define "agent-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-router.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agent-router.webhookServiceName" -}}
{{- printf "%s-webhook" (include "agent-router.fullname" .) }}
{{- end }}

{{/* What the apiserver dials and what the certificate is for: <svc>.<ns>.svc */}}
{{- define "agent-router.webhookHost" -}}
{{- printf "%s.%s.svc" (include "agent-router.webhookServiceName" .) .Release.Namespace }}
{{- end }}

{{/* Every name the webhook certificate is for, comma-separated: with and without the
cluster domain. */}}
{{- define "agent-router.webhookHosts" -}}
{{- $host := include "agent-router.webhookHost" . -}}
{{- printf "%s,%s.%s" $host $host .Values.clusterDomain }}
{{- end }}

{{- define "agent-router.webhookConfigName" -}}
{{- default (printf "%s-sidecar-injector.agentrouter.io" (include "agent-router.fullname" .)) .Values.webhook.name }}
{{- end }}

{{/* The Lease the replicas compete for (in the release namespace). */}}
{{- define "agent-router.leaseName" -}}
{{- include "agent-router.operatorName" . }}
{{- end }}

{{- define "agent-router.webhookCertificateName" -}}
{{- printf "%s-webhook" (include "agent-router.fullname" .) }}
{{- end }}

{{/* The Secret holding tls.crt, tls.key and ca.crt: cert-manager's, the user's, or the
one the operator keeps. */}}
{{- define "agent-router.webhookCertSecret" -}}
{{- default (printf "%s-webhook-tls" (include "agent-router.fullname" .)) .Values.webhook.existingCertSecret }}
{{- end }}

{{/* Whether the operator issues and renews the certificate itself. */}}
{{- define "agent-router.operatorKeepsCert" -}}
{{- if not (or .Values.webhook.certManager.enabled .Values.webhook.existingCertSecret) }}true{{ end }}
{{- end }}

{{/*
Who injects the sidecar into opted-in pods: "policy" (the API server's
MutatingAdmissionPolicy), "webhook" (the operator's webhook), or "" (no injection:
webhook.enabled=false, the operator serves no TLS port for the sidecars to watch).
`auto` asks the cluster: `helm install` and `helm upgrade` see the API versions it
serves; `helm template` sees only Helm's built-in list and `--api-versions`.
*/}}
{{- define "agent-router.injectionBy" -}}
{{- if .Values.webhook.enabled }}
{{- if ne .Values.injection.by "auto" }}
{{- .Values.injection.by }}
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" }}
{{- "policy" }}
{{- else }}
{{- "webhook" }}
{{- end }}
{{- end }}
{{- end }}

{{/* image: repository:tag or repository@digest; call with (list .Values.x.image .Chart) */}}
{{- define "agent-router.image" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "agent-router.operatorImage" -}}
{{- include "agent-router.image" (list .Values.image .Chart) }}
{{- end }}

{{- define "agent-router.sidecarImage" -}}
{{- include "agent-router.image" (list .Values.sidecar.image .Chart) }}
{{- end }}

{{/*
Checks that a schema cannot express (they depend on more than one value).
*/}}
{{- define "agent-router.validate" -}}
{{- if and .Values.podDisruptionBudget.enabled (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.minAvailable=%d with replicaCount=%d: no node could ever be drained; keep minAvailable below replicaCount (or disable the budget)" (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- end }}
{{- $ports := list (int .Values.operator.healthPort) (int .Values.operator.metricsPort) }}
{{- if .Values.webhook.enabled }}{{ $ports = append $ports (int .Values.webhook.port) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "operator.healthPort, operator.metricsPort and webhook.port must differ (got %v): the operator listens on each" $ports) }}
{{- end }}
{{- $sidecarPorts := list (int .Values.sidecar.appPort) (int .Values.sidecar.adminPort) (int .Values.sidecar.healthPort) }}
{{- if ne (len $sidecarPorts) (len (uniq $sidecarPorts)) }}
{{- fail (printf "sidecar.appPort, sidecar.adminPort and sidecar.healthPort must differ (got %v): the sidecar listens on each" $sidecarPorts) }}
{{- end }}
{{- if and .Values.webhook.certManager.enabled .Values.webhook.existingCertSecret }}
{{- fail "set either webhook.certManager.enabled or webhook.existingCertSecret, not both" }}
{{- end }}
{{- if and (eq (include "agent-router.injectionBy" .) "policy") (not (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")) (not (semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail "injection.by=policy needs Kubernetes 1.36 or later (MutatingAdmissionPolicy in admissionregistration.k8s.io/v1); injection.by=auto picks the webhook where it is not served" }}
{{- end }}
{{- end }}

{{/*
A rules file with its placeholders replaced: include "agent-router.rules" (list . <file> <names>)
*/}}
{{- define "agent-router.rules" -}}
{{- $root := index . 0 -}}
{{- $text := required (printf "%s is missing" (index . 1)) ($root.Files.Get (index . 1)) -}}
{{- range $placeholder, $name := index . 2 }}
{{- $text = replace $placeholder $name $text }}
{{- end }}
{{- $text }}
{{- end }}

{{/* Labels and annotations of the CRDs (their metadata's, unindented). */}}
{{- define "agent-router.crdMetadata" -}}
labels:
  {{- include "agent-router.labels" (list . "crds") | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  # helm uninstall (or a values change that drops them) leaves the CRDs, and with them
  # every AgentPool and RoutingPolicy in the cluster.
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

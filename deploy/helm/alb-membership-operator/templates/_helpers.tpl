{{- define "albm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "albm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "albm.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "albm.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "albm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "albm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "albm.labels" -}}
{{ include "albm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "albm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "albm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* What the operator may do where it watches: read its resources and write their status and finalizer,
     read pods and EndpointSlices (never write them; a pod's status is patched only for the readiness gate's
     condition), and post Events. */}}
{{- define "albm.watchRules" -}}
- apiGroups: [albmembership.io]
  resources: [servergroupmemberships]
  verbs: [get, list, watch, patch]
- apiGroups: [albmembership.io]
  resources: [servergroupmemberships/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.deletionGate.enabled }}
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list]
{{- end }}
{{- end -}}

{{/* The pod's affinity: .Values.affinity, plus a podAntiAffinity on kubernetes.io/hostname for the replicas
     (podAntiAffinity: preferred | required | none) unless affinity sets its own. */}}
{{- define "albm.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) -}}
{{- $mode := .Values.podAntiAffinity | default "none" -}}
{{- if and (ne $mode "none") (not (hasKey $affinity "podAntiAffinity")) -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "albm.selectorLabels" . | fromYaml)) -}}
{{- if eq $mode "required" -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) -}}
{{- else -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) -}}
{{- end -}}
{{- end -}}
{{- if $affinity -}}
{{- toYaml $affinity -}}
{{- end -}}
{{- end -}}

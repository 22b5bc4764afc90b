{{/* Labels every object carries; selectors use only name + component, which never change. */}}
{{- define "csi-iscsi.labels" -}}
app.kubernetes.io/name: csi-iscsi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "csi-iscsi.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{- define "csi-iscsi.sidecar" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}

{{/* The kubelet-side directory of the driver's node socket. */}}
{{- define "csi-iscsi.pluginDir" -}}
{{ printf "%s/plugins/%s" .Values.kubeletDir .Values.driverName }}
{{- end -}}

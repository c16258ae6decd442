// Words of the console in Simplified Chinese (the default) and English. t('key', {n: 3}) fills
// {n}; label('state', 'dispatched') names a value the API sends (states, categories, departments),
// falling back to the value itself for one this file does not know yet.

const KEY = 'city.lang';

const zh = {
  app_title: '城市精细化管理 · 实时控制台',
  app_short: '城市管理控制台',
  nav_overview: '总览', nav_map: '地图', nav_tasks: '任务', nav_crew: '我的任务', nav_gateways: '网关',
  nav_assessment: '考核', sign_out: '退出', lang_switch: 'English',
  live_connected: '实时连接', live_connecting: '连接中…', live_lost: '连接中断，重连中…',
  signin_title: '登录', signin_hint: '请输入管理员发放的访问令牌（hub tokens add 生成；演示时见 data/demo-admin.token）。',
  signin_token: '访问令牌', signin_submit: '登录', signin_bad: '令牌无效或已吊销',
  signed_in_as: '{name}（{role}）',
  loading: '加载中…', never: '从未', ago: '{d}前', in_time: '{d}后',
  dur_s: '{n} 秒', dur_m: '{n} 分钟', dur_h: '{n} 小时 {m} 分', dur_d: '{n} 天',
  on_true: '开', off_false: '关',
  // overview
  ov_devices: '在线设备', ov_devices_sub: '{gw} 个网关在线，共 {gws} 个',
  ov_open_tasks: '未结案任务', ov_open_sub: '{overdue} 件超时',
  ov_water: '积水点', ov_water_sub: '{n} 个监测点，最深 {max}',
  ov_violations: '今日违法', ov_violations_sub: '违停 {p} · 渣土车 {t} · 占道 {s}',
  ov_lighting: '亮灯', ov_lighting_sub: '本月亮灯率 {rate}',
  ov_by_category: '未结案任务（按类别、等级）', ov_category: '类别', ov_total: '合计',
  ov_water_points: '积水监测点', ov_recent: '最新未结案任务', ov_feed: '实时动态', ov_feed_empty: '等待实时数据…',
  ov_last_reading: '最新读数', ov_readings_count: '本页已收到 {n} 条实时读数',
  // map
  map_title: '地图', map_legend_ok: '正常', map_legend_task: '有任务', map_legend_critical: '紧急',
  map_legend_bad: '数据异常', map_legend_offline: '离线', map_legend_lit: '亮灯',
  map_select: '点击地图上的设备查看详情', map_open_detail: '打开详情', map_zoom_in: '放大', map_zoom_out: '缩小',
  map_zoom_reset: '复位', map_kinds: '显示',
  // asset
  asset_title: '设备 {id}', asset_latest: '最新数值', asset_metric: '指标', asset_value: '数值',
  asset_chart: '趋势', asset_range: '时间范围', asset_step: '服务端降采样：每 {s} 一点（均值，阴影为最小—最大）',
  asset_raw: '原始读数', asset_no_data: '此时间范围内无数据', asset_tasks: '相关任务', asset_none: '无',
  asset_kind: '类型', asset_gateway: '网关 / 设备', asset_location: '位置', asset_segment: '路段',
  asset_grid: '网格', asset_zone: '区域', asset_last_seen: '最后上报', asset_bad: '异常',
  range_10m: '10 分钟', range_1h: '1 小时', range_6h: '6 小时', range_24h: '24 小时', range_7d: '7 天',
  // tasks
  tasks_title: '任务看板', tasks_count: '{n} 件', f_status: '状态', f_kind: '类型', f_category: '类别',
  f_department: '部门', f_severity: '等级', f_search: '搜索', f_all: '全部',
  status_open: '未结案', status_closed: '已结案/撤销', status_all: '全部',
  col_id: '编号', col_severity: '等级', col_state: '状态', col_category: '类别', col_title: '标题',
  col_subject: '对象', col_department: '部门', col_segment: '路段', col_opened: '立案', col_due: '时限',
  overdue: '超时 {d}', due_in: '剩 {d}', tasks_empty: '没有符合条件的任务',
  // task detail
  task_title: '任务 #{id}', task_back: '返回看板', task_facts: '案件信息', task_detail: '现场数据',
  task_actions: '处置', task_note: '说明（处置、退回、撤销时必填）', task_dept: '派往部门',
  task_no_actions: '当前角色在此状态下无可执行操作', task_history: '流转记录', task_notifications: '通知送达',
  task_no_notifications: '无通知（规则文件未配置通知渠道）', task_evidence: '取证图片',
  task_evidence_hidden: '取证图片仅执法角色可见', task_readings: '触发前后的读数', task_plate: '车牌',
  task_note_required: '此操作需要填写说明', task_done: '已{action}',
  h_at: '时间', h_actor: '操作人', h_action: '动作', h_from: '由', h_to: '至', h_note: '说明',
  n_channel: '渠道', n_action: '动作', n_state: '状态', n_attempts: '尝试', n_error: '最后错误', n_delivered: '送达时间',
  opened: '立案', due: '时限', closed_at: '结案', kind: '类型', asset: '设备', subject: '对象',
  zone: '区域', segment: '路段', grid: '网格', department: '部门', severity: '等级', rule: '规则',
  // crew
  crew_title: '我的任务', crew_dept: '部门：{d}', crew_empty: '暂无待办任务', crew_done: '待核查',
  crew_location: '位置', crew_navigate: '导航', crew_handle_note: '处置说明（必填）',
  crew_submit_handle: '提交处置', crew_due: '时限 {t}',
  // gateways
  gw_title: '网关', gw_state: '状态', gw_heartbeat: '最后心跳', gw_uptime: '运行时长', gw_clock: '时钟',
  gw_spool: '缓存队列', gw_spool_depth: '积压 {n} 条，{b}', gw_drops: '丢弃', gw_evidence: '取证上传',
  gw_evidence_v: '待传 {p}，已传 {u}，丢弃 {d}', gw_disk: '磁盘剩余', gw_mem: '内存', gw_agent: '程序版本',
  gw_devices: '设备链路', gw_device: '设备', gw_asset: '资产', gw_link: '链路', gw_failures: '连续失败',
  gw_last_success: '最后成功', gw_connected: '连接于', gw_no_heartbeat: '尚无心跳',
  gw_config: '配置', gw_config_hub: '平台下发 v{v}（{s}）', gw_config_hub_trial: '平台下发 v{v}（{s}），试运行中',
  gw_config_local: '本地文件（{s}），平台未下发', gw_config_local_override: '本地文件（{s}），现场修改晚于平台 v{v}',
  gw_config_rolled_back: 'v{v} 已回滚：{r}', gw_config_refused: 'v{v} 被网关拒绝：{r}',
  clock_synced: '已同步', clock_unsynced: '未同步', link_up: '正常', link_down: '中断',
  online: '在线', offline: '离线',
  // assessment
  as_title: '月度考核排名', as_month: '月份', as_csv: '下载 CSV', as_formula: '计分公式',
  as_segments: '路段', as_chiefs: '路长', as_departments: '部门', as_rank: '排名', as_name: '名称',
  as_chief: '路长', as_raised: '立案', as_closed: '结案', as_cancelled: '撤销', as_ontime: '按时结案率',
  as_mean: '平均结案时长(时)', as_recurring: '重复发生', as_lighting: '亮灯率', as_violations: '违法',
  as_score: '得分', as_empty: '本月无数据',
  // roles
  role_admin: '管理员', role_operator: '值班员', role_enforcement: '执法', role_crew: '作业班组', role_installer: '安装调试',
};

const en = {
  app_title: 'City management · live console',
  app_short: 'City console',
  nav_overview: 'Overview', nav_map: 'Map', nav_tasks: 'Tasks', nav_crew: 'My tasks', nav_gateways: 'Gateways',
  nav_assessment: 'Assessment', sign_out: 'Sign out', lang_switch: '中文',
  live_connected: 'Live', live_connecting: 'Connecting…', live_lost: 'Connection lost, reconnecting…',
  signin_title: 'Sign in', signin_hint: 'Enter the access token you were given (made by hub tokens add; for the demo see data/demo-admin.token).',
  signin_token: 'Access token', signin_submit: 'Sign in', signin_bad: 'Unknown or revoked token',
  signed_in_as: '{name} ({role})',
  loading: 'Loading…', never: 'never', ago: '{d} ago', in_time: 'in {d}',
  dur_s: '{n} s', dur_m: '{n} min', dur_h: '{n} h {m} min', dur_d: '{n} d',
  on_true: 'on', off_false: 'off',
  ov_devices: 'Devices online', ov_devices_sub: '{gw} of {gws} gateways online',
  ov_open_tasks: 'Open tasks', ov_open_sub: '{overdue} overdue',
  ov_water: 'Waterlogging points', ov_water_sub: '{n} monitored, deepest {max}',
  ov_violations: "Today's violations", ov_violations_sub: 'parking {p} · trucks {t} · trading {s}',
  ov_lighting: 'Lamps lit', ov_lighting_sub: "this month's lighting rate {rate}",
  ov_by_category: 'Open tasks by category and severity', ov_category: 'Category', ov_total: 'Total',
  ov_water_points: 'Waterlogging points', ov_recent: 'Latest open tasks', ov_feed: 'Live feed', ov_feed_empty: 'Waiting for live data…',
  ov_last_reading: 'Latest reading', ov_readings_count: '{n} live readings received on this page',
  map_title: 'Map', map_legend_ok: 'OK', map_legend_task: 'open task', map_legend_critical: 'critical',
  map_legend_bad: 'bad data', map_legend_offline: 'offline', map_legend_lit: 'lit',
  map_select: 'Select a device on the map for its detail', map_open_detail: 'Open detail', map_zoom_in: 'Zoom in',
  map_zoom_out: 'Zoom out', map_zoom_reset: 'Reset', map_kinds: 'Show',
  asset_title: 'Asset {id}', asset_latest: 'Latest values', asset_metric: 'Metric', asset_value: 'Value',
  asset_chart: 'Trend', asset_range: 'Range', asset_step: 'Downsampled by the hub: one point per {s} (mean; band: min–max)',
  asset_raw: 'raw readings', asset_no_data: 'No data in this range', asset_tasks: 'Its tasks', asset_none: 'none',
  asset_kind: 'Kind', asset_gateway: 'Gateway / device', asset_location: 'Location', asset_segment: 'Road segment',
  asset_grid: 'Grid', asset_zone: 'Zone', asset_last_seen: 'Last seen', asset_bad: 'Bad',
  range_10m: '10 min', range_1h: '1 h', range_6h: '6 h', range_24h: '24 h', range_7d: '7 d',
  tasks_title: 'Task board', tasks_count: '{n} tasks', f_status: 'Status', f_kind: 'Kind', f_category: 'Category',
  f_department: 'Department', f_severity: 'Severity', f_search: 'Search', f_all: 'all',
  status_open: 'open', status_closed: 'closed/cancelled', status_all: 'all',
  col_id: 'No.', col_severity: 'Severity', col_state: 'State', col_category: 'Category', col_title: 'Title',
  col_subject: 'Subject', col_department: 'Department', col_segment: 'Road segment', col_opened: 'Opened', col_due: 'Due',
  overdue: 'overdue {d}', due_in: '{d} left', tasks_empty: 'No tasks match',
  task_title: 'Task #{id}', task_back: 'Back to the board', task_facts: 'Case', task_detail: 'Data',
  task_actions: 'Actions', task_note: 'Note (needed to handle, reopen or cancel)', task_dept: 'Send to department',
  task_no_actions: 'Nothing this role may do in this state', task_history: 'Audit trail', task_notifications: 'Notifications',
  task_no_notifications: 'None (the rules file names no channels)', task_evidence: 'Evidence images',
  task_evidence_hidden: 'Evidence images are for enforcement roles only', task_readings: 'Readings around the trigger',
  task_plate: 'Plate', task_note_required: 'This action needs a note', task_done: '{action}: done',
  h_at: 'At', h_actor: 'Who', h_action: 'Action', h_from: 'From', h_to: 'To', h_note: 'Note',
  n_channel: 'Channel', n_action: 'Action', n_state: 'State', n_attempts: 'Attempts', n_error: 'Last error', n_delivered: 'Delivered',
  opened: 'Opened', due: 'Due', closed_at: 'Closed', kind: 'Kind', asset: 'Asset', subject: 'Subject',
  zone: 'Zone', segment: 'Road segment', grid: 'Grid', department: 'Department', severity: 'Severity', rule: 'Rule',
  crew_title: 'My tasks', crew_dept: 'Department: {d}', crew_empty: 'Nothing to do', crew_done: 'Awaiting verification',
  crew_location: 'Location', crew_navigate: 'Navigate', crew_handle_note: 'What was done (required)',
  crew_submit_handle: 'Submit', crew_due: 'due {t}',
  gw_title: 'Gateways', gw_state: 'State', gw_heartbeat: 'Last heartbeat', gw_uptime: 'Uptime', gw_clock: 'Clock',
  gw_spool: 'Spool', gw_spool_depth: '{n} queued, {b}', gw_drops: 'Dropped', gw_evidence: 'Evidence upload',
  gw_evidence_v: '{p} pending, {u} uploaded, {d} dropped', gw_disk: 'Disk free', gw_mem: 'Memory', gw_agent: 'Agent',
  gw_devices: 'Device links', gw_device: 'Device', gw_asset: 'Asset', gw_link: 'Link', gw_failures: 'Failures in a row',
  gw_last_success: 'Last success', gw_connected: 'Connected', gw_no_heartbeat: 'no heartbeat yet',
  gw_config: 'Configuration', gw_config_hub: 'hub v{v} ({s})', gw_config_hub_trial: 'hub v{v} ({s}), on trial',
  gw_config_local: 'local file ({s}), nothing pushed', gw_config_local_override: 'local file ({s}), edited after hub v{v}',
  gw_config_rolled_back: 'v{v} rolled back: {r}', gw_config_refused: 'v{v} refused by the gateway: {r}',
  clock_synced: 'synced', clock_unsynced: 'NOT synced', link_up: 'up', link_down: 'down',
  online: 'online', offline: 'offline',
  as_title: 'Monthly assessment', as_month: 'Month', as_csv: 'Download CSV', as_formula: 'Score',
  as_segments: 'Road segments', as_chiefs: 'Road chiefs', as_departments: 'Departments', as_rank: 'Rank', as_name: 'Name',
  as_chief: 'Road chief', as_raised: 'Raised', as_closed: 'Closed', as_cancelled: 'Cancelled', as_ontime: 'On time',
  as_mean: 'Mean h to close', as_recurring: 'Recurring', as_lighting: 'Lighting rate', as_violations: 'Violations',
  as_score: 'Score', as_empty: 'Nothing this month',
  role_admin: 'admin', role_operator: 'operator', role_enforcement: 'enforcement', role_crew: 'crew', role_installer: 'installer',
};

// Values the API sends, by what they are.
const labels = {
  zh: {
    state: {
      filed: '已立案', dispatched: '已派遣', accepted: '已接单', handling: '处置中', handled: '已处置',
      verified: '已核查', closed: '已结案', cancelled: '已撤销',
    },
    action: {
      file: '立案', dispatch: '派遣', accept: '接单', start: '开始处置', handle: '处置完成', verify: '核查通过',
      close: '结案', reopen: '退回重办', cancel: '撤销', escalate: '升级督办', cleared: '自动消除', remind: '催办',
    },
    severity: { info: '提示', warning: '一般', high: '较重', critical: '紧急' },
    kind: {
      enforcement: '执法', maintenance: '维护', streetlight: '路灯', waterlogging: '积水监测', smartBin: '智能垃圾桶',
      dustMonitor: '扬尘监测', parkingCamera: '违停抓拍', encroachmentCamera: '占道识别', cabinet: '机柜门磁',
      rainGauge: '雨量计', warningLight: '警示灯', gateway: '网关',
    },
    category: {
      lamp_out: '路灯不亮', lamp_on_by_day: '路灯白天亮灯', lamp_electrical: '路灯电气异常', lighting_rate: '亮灯率不达标',
      waterlogging: '道路积水', waterlogging_critical: '积水封路', waterlogging_rise: '积水预警',
      bin_full: '垃圾桶满', bin_overflow: '垃圾桶满溢', bin_hazard: '垃圾桶险情', bin_not_emptied: '未及时清运',
      dust: '工地扬尘', noise: '工地噪声', parking_violation: '违法停车', truck_restricted: '货车闯禁区',
      street_trading: '占道经营', device_offline: '设备离线', gateway_offline: '网关离线',
      sensor_flatline: '传感器读数不变', sensor_implausible: '读数超出量程', manual: '人工上报',
    },
    department: {
      lighting: '路灯所', drainage: '排水所', 'drainage-gulou': '鼓楼排水所', sanitation: '环卫所',
      construction: '住建', 'enforcement-squad': '综合执法中队', 'traffic-police': '交警中队', 'road-chief': '路长',
      'device-contractor': '设备维保单位', 'market-supervision': '市场监管所',
    },
    metric: {
      activePower: '有功功率', activeEnergy: '电能', dimLevel: '调光', intensity: '电流', voltage: '电压',
      powerState: '开关', lampFailure: '灯具故障', operatingHours: '运行小时', overCurrent: '过流', overVoltage: '过压',
      powerFactor: '功率因数', waterDepth: '积水深度', measuredDistance: '测距', sensorStatus: '传感器状态',
      signalStrength: '信号强度', averagingTime: '平均时间', temperature: '温度', fillingLevel: '满溢度',
      batteryLevel: '电量', lidOpen: '桶盖打开', tilted: '倾倒', rssi: '信号', pm25: 'PM2.5', pm10: 'PM10', tsp: 'TSP',
      LAeq: '噪声', relativeHumidity: '湿度', atmosphericPressure: '气压', windDirection: '风向', windSpeed: '风速',
      rainfall: '雨量', tamper: '柜门', floatSwitch: '浮球开关',
    },
    channel: {},
    field: {
      at: '时间', confidence: '置信度', plate: '车牌', plateColor: '车牌颜色', vehicleType: '车型', zone: '区域',
      depthCm: '水深 (cm)', limitCm: '限值 (cm)', since: '开始于', powerW: '功率 (W)', ratedW: '额定功率 (W)',
      fill: '满溢度', limit: '限值', minutesToOverflow: '预计满溢 (分钟)', riseCm: '上涨 (cm)', windowMin: '时间窗 (分钟)',
      pm10: 'PM10', value: '数值', metric: '指标', captures: '抓拍次数', minutes: '分钟', permit: '通行证',
      yellow: '黄牌', blue: '蓝牌', green: '绿牌', white: '白牌', black: '黑牌',
      car: '小型车', truck: '货车', muckTruck: '渣土车', bus: '公交车', van: '面包车',
    },
  },
  en: {
    state: {},
    action: { escalate: 'escalate', cleared: 'cleared by the sensor' },
    severity: {},
    kind: {
      smartBin: 'smart bin', dustMonitor: 'dust monitor', parkingCamera: 'parking camera',
      encroachmentCamera: 'encroachment camera', rainGauge: 'rain gauge', warningLight: 'warning light',
    },
    category: {},
    department: {},
    metric: {},
    channel: {},
    field: {},
  },
};

let current = localStorage.getItem(KEY) === 'en' ? 'en' : 'zh';

export function lang() {
  return current;
}

export function setLang(l) {
  current = l === 'en' ? 'en' : 'zh';
  localStorage.setItem(KEY, current);
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
}

export function t(key, vars) {
  const dict = current === 'zh' ? zh : en;
  let text = dict[key] ?? en[key] ?? key;
  for (const [k, v] of Object.entries(vars || {})) text = text.replaceAll(`{${k}}`, v);
  return text;
}

/** The name of an API value: label('state', 'dispatched') → 已派遣. */
export function label(what, v) {
  if (v === null || v === undefined || v === '') return '—';
  const table = labels[current][what] || {};
  if (table[v]) return table[v];
  return String(v).replaceAll('_', ' ');
}

'use strict';

// RegisterRecord by a patient for itself: a fresh record id, a syntactically valid CID and
// digest and a 64-byte capsule, as bench fabric sends (ehrshare.bench.fabric._record).

const crypto = require('crypto');
const { EhrWorkload } = require('./common');

class RegisterRecord extends EhrWorkload {
    async submitTransaction() {
        const index = this.pick(this.roundArguments.patients.length);
        const patient = this.roundArguments.patients[index];
        const recordId = `c-${this.tag}-${this.sent}`;
        const digest = crypto.createHash('sha256').update(recordId).digest('hex');
        const capsule = crypto.createHash('sha512').update(recordId).digest('base64');
        await this.send({
            contractId: this.roundArguments.contract,
            contractFunction: 'RegisterRecord',
            contractArguments: [recordId, patient.ibeId, 'lab', 'bafkrei' + digest.slice(0, 52), digest, capsule, '1'],
            invokerIdentity: patient.alias,
            invokerMspId: patient.msp,
            readOnly: false,
        }, index);
    }
}

module.exports.createWorkloadModule = () => new RegisterRecord();
